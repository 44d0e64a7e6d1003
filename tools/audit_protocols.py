#!/usr/bin/env python
"""Compare every shipped transfer config, in each mode, with the published protocol it claims.

    python tools/audit_protocols.py [CONFIG ...] [--mode finetune|frozen] [--strict]

The published settings are configs/protocols/*.yaml; a difference is either a documented deviation (with
its reason) or marked NOT DOCUMENTED. Prints one table; with --strict the exit status is 1 when any
difference is not documented. Library: transfer/training/protocol_audit.py.
"""
import sys

from pretrain.common.cli import ArgumentParser, one_line_errors
from transfer.training.config import MODES, ConfigError
from transfer.training.protocol_audit import audit, audit_table

PROG = "audit_protocols"


def main(argv=None):
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", metavar="CONFIG",
                        help="transfer config files (default: every task config in configs/transfer/)")
    parser.add_argument("--mode", choices=MODES, help="audit one TRANSFER.MODE only (default: both)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 on an undocumented difference")
    args = parser.parse_args(argv)
    with one_line_errors(PROG, ConfigError):
        rows = audit(args.configs or None, (args.mode,) if args.mode else MODES)
    print(audit_table(rows), end="")
    return 1 if args.strict and any(row.undocumented for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
