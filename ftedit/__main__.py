"""`python -m ftedit` runs the CLI."""

from ftedit.cli import main

if __name__ == "__main__":
    main()
