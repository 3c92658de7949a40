"""Render stack/nginx.conf the way the nginx image does, for tools that read a whole config.

The image's entrypoint runs envsubst on /etc/nginx/templates/*.template, replacing only the
variables given to it, and writes the result to /etc/nginx/conf.d/, which the image's
nginx.conf includes inside its http {} block. This script does the same with the variables
given on its command line and writes, under OUTDIR:

    OUTDIR/conf.d/default.conf   the rendered template
    OUTDIR/nginx.conf            events {} and http { include conf.d/*.conf; }

so that OUTDIR/nginx.conf can be handed to gixy (or to `nginx -t -p OUTDIR -c nginx.conf`).

    python stack/render_nginx_conf.py stack/nginx.conf OUTDIR HTTPS_PUBLIC_PORT=443
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# envsubst replaces $NAME and ${NAME} of the variables it is given and leaves every other
# dollar sign alone: nginx's own $variables stay as they are.
VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)\}|(?P<bare>[A-Za-z_]\w*))")
NAME = re.compile(r"[A-Za-z_]\w*")

MAIN_CONF = """\
# The nginx image's main file, reduced to what places conf.d/ in the http context.
events {}

http {
    include conf.d/*.conf;
}
"""


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """NAME=VALUE arguments as a mapping; ValueError on anything else."""
    values: dict[str, str] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not NAME.fullmatch(name):
            raise ValueError(f"expected NAME=VALUE, got {assignment!r}")
        values[name] = value
    return values


def render(template: str, values: dict[str, str]) -> str:
    """The template with the given variables substituted, as envsubst would."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        return values.get(name, match.group(0))

    return VARIABLE.sub(substitute, template)


def unused_names(template: str, values: dict[str, str]) -> list[str]:
    """Names given on the command line that the template never mentions (likely typos)."""
    used = {m.group("braced") or m.group("bare") for m in VARIABLE.finditer(template)}
    return sorted(set(values) - used)


def write_config(outdir: Path, rendered: str) -> Path:
    """Write the rendered file and the main file that includes it; return the main file."""
    (outdir / "conf.d").mkdir(parents=True, exist_ok=True)
    (outdir / "conf.d" / "default.conf").write_text(rendered, encoding="utf-8")
    main = outdir / "nginx.conf"
    main.write_text(MAIN_CONF, encoding="utf-8")
    return main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template", type=Path, help="the template, e.g. stack/nginx.conf")
    parser.add_argument("outdir", type=Path, help="directory to write nginx.conf and conf.d/ in")
    parser.add_argument("variables", nargs="*", metavar="NAME=VALUE", help="values to fill in")
    args = parser.parse_args(argv)

    try:
        values = parse_assignments(args.variables)
    except ValueError as error:
        parser.error(str(error))
    if not args.template.is_file():
        parser.error(f"no such file: {args.template}")
    template = args.template.read_text(encoding="utf-8")
    unused = unused_names(template, values)
    if unused:
        parser.error(f"not in {args.template}: {', '.join(unused)}")

    main_conf = write_config(args.outdir, render(template, values))
    print(f"rendered {args.template} into {main_conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
