"""``python -m amqptasks``: the same command line as the ``amqptasks`` script."""

from amqptasks.cli import main

if __name__ == "__main__":
    main()
