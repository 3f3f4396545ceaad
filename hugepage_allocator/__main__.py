"""python -m hugepage_allocator doctor | reserve SIZE [...]"""
import sys


def main(argv: list[str]) -> int:
    commands = {"doctor": "_doctor", "reserve": "_reserve"}
    if not argv or argv[0] not in commands:
        print("usage: python -m hugepage_allocator doctor [--size SIZE]\n"
              "       python -m hugepage_allocator reserve SIZE [--page-size 2M|1G] [--node N] [--persist]",
              file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(f"hugepage_allocator.{commands[argv[0]]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
