"""``python -m pvit``: the pvit command line."""

from pvit.cli import main

if __name__ == "__main__":
    main()
