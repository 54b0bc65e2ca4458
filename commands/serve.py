"""``python -m nextdit_nodes serve``: the graph editor on http://127.0.0.1:8188."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys
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


class PortInUseError(Exception):
    """The port is taken; the message suggests a free one."""


def _check_port(listen: str, port: int) -> None:
    """Refuse a port another program holds before anything starts (instead of aiohttp's traceback),
    naming the next free one."""
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET

    def free(candidate: int) -> bool:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as aiohttp binds
            try:
                probe.bind((listen, candidate))
            except OSError:
                return False
            return True

    if free(port):
        return
    spare = next((candidate for candidate in range(port + 1, min(port + 50, 65536)) if free(candidate)), None)
    hint = f"; port {spare} is free: --port {spare}" if spare else "; choose another with --port"
    raise PortInUseError(f"port {port} on {listen} is in use (another ComfyUI or `serve`?){hint}")


def _folders(args: argparse.Namespace) -> list[str]:
    """Where this server reads and writes, for the start-up message."""
    from ..nodes.host import EMBEDDED_DIR, headless_models_dirs

    models = ", ".join(str(d.resolve()) for d in headless_models_dirs())
    return [f"  models: {models} (diffusion_models/, text_encoders/, vae/, loras/: a trained LoRA goes "
            f"into loras/), and the embedded model in {EMBEDDED_DIR}",
            f"  output: {args.output_dir.resolve()}", f"  uploads: {args.input_dir.resolve()}",
            f"  editor settings and saved workflows: {args.user_dir.resolve()}"]


def _command(args: argparse.Namespace) -> int:
    from ..server.app import ServerConfig, serve  # aiohttp only when serving

    use_models_dirs(args.models_dir)
    if not _is_loopback(args.listen):
        log.warning("listening on %s: anyone who can reach port %d can run graphs on this machine "
                    "and read the images it made; keep it on a trusted network", args.listen, args.port)
    try:
        _check_port(args.listen, args.port)
    except PortInUseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    shown = f"[{args.listen}]" if ":" in args.listen else args.listen
    print("\n".join(["Folders:", *_folders(args)]), flush=True)
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
