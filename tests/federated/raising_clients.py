"""Test-only ClientApps that fail on chosen messages. A module of its own, not conftest.py: a
`from conftest import` finds whichever conftest another test folder put on sys.path first."""


class RaisingClients:
    """Test-only: a ClientApp whose clients raise a real exception on the messages `fails`
    picks, (message, partition) → bool, and otherwise answer as `app` does."""

    def __init__(self, app, fails):
        self.app, self.fails = app, fails

    def __call__(self, message, context):
        partition = int(context.node_config["partition-id"])
        if self.fails(message, partition):
            raise RuntimeError(f"disk full on client {partition}")
        return self.app(message, context)


def in_round(group: str, partitions=None):
    """`fails` for the messages of one group (e.g. 'round-2', 'warmup', 'setup'), to `partitions` (all by default)."""
    return lambda message, partition: message.metadata.group_id == group and (partitions is None or partition in partitions)
