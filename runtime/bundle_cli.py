"""The commands that get bundles onto a machine without building them: ``edgemm pull`` (runtime/hub.py) and
``edgemm bundle pack|install`` (runtime/archive.py)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("edgemm")


def cmd_pull(args) -> int:
    from edgemm.runtime.bundle import models_dir
    from edgemm.runtime.errors import OptionsError
    from edgemm.runtime.hub import default_names, pull

    names = args.names or default_names()
    if args.repo and len(names) != 1:
        raise OptionsError("--repo names the repository of one bundle: give exactly one NAME with it")
    log.info("into %s", models_dir())
    for name in names:
        folder = pull(name, repo=args.repo, revision=args.revision)
        log.info("%s: ready (%s)", name, folder)
    return 0


def cmd_pack(args) -> int:
    from edgemm.runtime.archive import pack

    out = pack(args.bundle, args.out)
    log.info(
        "wrote %s (%.0f MB): install it elsewhere with `edgemm bundle install %s`",
        out,
        out.stat().st_size / 1e6,
        out.name,
    )
    return 0


def cmd_install(args) -> int:
    from edgemm.runtime.archive import install

    for source in args.files:
        log.info("%s: installed (%s)", source, install(source))
    return 0


def register(sub, parents: list, fmt) -> None:
    """Add ``pull`` and ``bundle`` to the ``edgemm`` subcommands ``sub``."""
    p = sub.add_parser(
        "pull",
        parents=parents,
        help="download prebuilt bundles from the Hugging Face Hub (no torch needed)",
        formatter_class=fmt,
        description="Download bundles into $EDGEMM_MODELS (default ~/.cache/edgemm/models), each file checked "
        "against its manifest's sha256. $HF_ENDPOINT names a mirror; $EDGEMM_HUB_OWNER an owner in place of edgemm.",
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="presets (see edgemm models) or repositories owner/name; none: the default bundles of the machine profile",
    )
    p.add_argument("--repo", help="the repository to take NAME from, instead of the preset's")
    p.add_argument("--revision", default="main", help="a branch, tag or commit of the repository")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("bundle", help="a bundle as one file: pack it here, install it on another machine")
    verbs = p.add_subparsers(dest="verb", required=True)
    v = verbs.add_parser(
        "pack", parents=parents, help="write a bundle into one file (checked first)", formatter_class=fmt
    )
    v.add_argument("bundle", help="a bundle name in $EDGEMM_MODELS, or a bundle folder")
    v.add_argument("-o", "--out", type=Path, default=None, help="the file to write (default: NAME.tar here)")
    v.set_defaults(func=cmd_pack)
    v = verbs.add_parser(
        "install", parents=parents, help="install bundle files into $EDGEMM_MODELS (verified)", formatter_class=fmt
    )
    v.add_argument("files", nargs="+", metavar="FILE", help="a bundle file (edgemm bundle pack), or its http(s) URL")
    v.set_defaults(func=cmd_install)
