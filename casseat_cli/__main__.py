"""`python -m casseat_cli ...` = `casseat-edge ...`."""

from casseat_cli.launch import entry

if __name__ == "__main__":
    entry()
