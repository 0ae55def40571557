"""``kerasllm``: the command line. Thin: it parses arguments and calls the task functions.

One module per command group; each adds its sub-commands to the parser here. TensorFlow is
imported only by the handlers that need it, so ``kerasllm --help`` is instant.
"""
from __future__ import annotations

import argparse
import sys

from kerasllm.cli.classify import add_classify_commands
from kerasllm.cli.compression import add_compression_commands
from kerasllm.cli.language_model import add_language_model_commands
from kerasllm.cli.quickstart import add_quickstart_command
from kerasllm.cli.serving import add_serving_commands
from kerasllm.cli.similarity import add_similarity_commands

COMMAND_GROUPS = (add_quickstart_command, add_classify_commands, add_similarity_commands,
                  add_language_model_commands, add_compression_commands, add_serving_commands)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from kerasllm.logs import set_verbose

    set_verbose(args.verbose)  # before any handler imports TensorFlow
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except (ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"kerasllm: error: {message}", file=sys.stderr)
        return 2


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kerasllm", description="Train small text models on your own text, compress them, export them to "
        "TFLite and TF Serving, and answer fast.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show TensorFlow, absl, LiteRT and tf_keras log messages (hidden by default)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in COMMAND_GROUPS:
        add(sub)
    _verbose_everywhere(parser)
    return parser


def _verbose_everywhere(parser):
    """Accept ``--verbose`` after any sub-command too (``kerasllm quickstart --verbose``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if "--verbose" not in child._option_string_actions:
                    child.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                       help=argparse.SUPPRESS)
                _verbose_everywhere(child)
