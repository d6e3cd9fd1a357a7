"""``python3 -m inferd_client info|infer``: a quick check of a running inferd."""

import argparse
import json
from typing import Optional, Sequence

from inferd_client import InferdClient, zeros_observation


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Prints the server's metadata (info), or the answer to an observation of zeros (infer)."""
    parser = argparse.ArgumentParser(prog="python3 -m inferd_client", description="A quick check of a running inferd.")
    parser.add_argument("--socket", default=None, help="inferd's socket (default: as inferd)")
    parser.add_argument("--prompt", default="", help="the text of every text input (infer)")
    parser.add_argument("command", choices=["info", "infer"])
    args = parser.parse_args(argv)
    with InferdClient(args.socket) as client:
        if args.command == "info":
            print(json.dumps(client.metadata, indent=2))
        else:
            answer = client.infer_full(zeros_observation(client.metadata, args.prompt))
            for name, value in answer["outputs"].items():
                print(name, value.tolist())
            print("timing", answer["timing"])


if __name__ == "__main__":
    main()
