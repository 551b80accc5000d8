"""`python -m casseat_cli ...` = `casseat-edge ...`."""

from casseat_cli.cli import main

if __name__ == "__main__":
    main(prog_name="casseat-edge")
