"""``python -m nextdit_nodes serve``: the graph editor on http://127.0.0.1:8188."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from .arguments import use_models_dirs

log = logging.getLogger(__name__)


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _command(args: argparse.Namespace) -> int:
    from ..server.app import ServerConfig, serve  # aiohttp only when serving

    use_models_dirs(args.models_dir)
    if not _is_loopback(args.listen):
        log.warning("listening on %s: anyone who can reach port %d can run graphs on this machine "
                    "and read the images it made; keep it on a trusted network", args.listen, args.port)
    shown = f"[{args.listen}]" if ":" in args.listen else args.listen
    print(f"The editor is at http://{shown}:{args.port}/ (Ctrl-C stops it)", flush=True)
    serve(ServerConfig(output_dir=args.output_dir, input_dir=args.input_dir, user_dir=args.user_dir,
                       listen=args.listen, allow_hosts=tuple(args.allow_host)), port=args.port)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="the ComfyUI graph editor in a browser, running graphs with the runner",
        description="Serve ComfyUI's graph editor (comfyui-frontend-package) over the pack's "
                    "runner: the pack's nodes plus SaveImage / PreviewImage / primitives, with the "
                    "embedded model ready to run. Binds 127.0.0.1 unless --listen says otherwise.")
    parser.add_argument("--port", type=int, default=8188, help="port (default 8188)")
    parser.add_argument("--listen", default="127.0.0.1", metavar="ADDRESS",
                        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 lets "
                             "anyone who reaches the port run graphs)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a host name the browser may use to reach the server (repeatable); "
                             "IP addresses, localhost and the --listen name are always allowed, "
                             "other names are refused (they are how DNS-rebinding pages get in)")
    parser.add_argument("--models-dir", action="append", type=Path, metavar="DIR",
                        help="models folder laid out like ComfyUI's (diffusion_models/, "
                             "text_encoders/, vae/, loras/); repeatable; default: "
                             "$NEXTDIT_MODELS_DIR, else ./models; the embedded model is always there")
    parser.add_argument("--output-dir", type=Path, default=Path("output"), metavar="DIR",
                        help="where SaveImage writes (default ./output)")
    parser.add_argument("--input-dir", type=Path, default=Path("input"), metavar="DIR",
                        help="where uploaded images go (default ./input)")
    parser.add_argument("--user-dir", type=Path, default=Path("user"), metavar="DIR",
                        help="the editor's settings and saved workflows (default ./user)")
    parser.set_defaults(func=_command)
