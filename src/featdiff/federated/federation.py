"""The server's line to the clients through any Flower `Grid` (the simulation engine's, a
SuperLink's, or featdiff's in-process one), shared by every strategy.

`Federation` maps nodes to partitions, counts the bytes of every serialised message both ways,
applies the setup/warm-up and round timeouts, and keeps who failed and why: an error reply's
reason is never dropped, so a round's record can say which client failed with what.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from featdiff.federated.task import message_bytes

NO_REPLY = "no reply before the timeout"
REASON_CHARACTERS = 300
"""An error's reason is cut to this many characters in a one-line message (a client's traceback
can be long; the round record keeps it whole)."""


@dataclass
class Exchange:
    """One request to a set of partitions: the successful replies, the partitions without one
    (`missing`), each failed partition's error text (`errors`), and the bytes both ways."""

    replies: dict[int, RecordDict] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    up_bytes: int = 0
    down_bytes: int = 0

    def failures(self) -> str:
        """Every partition without a reply and why, on one line."""
        reasons = {str(p): self.errors.get(str(p), NO_REPLY) for p in self.missing} | self.errors
        return "; ".join(f"client {p}: {' '.join(reason.split())[:REASON_CHARACTERS]}" for p, reason in reasons.items())


def error_text(reply: Message) -> str:
    return f"{reply.error.reason or 'no reason given'} (Flower error code {reply.error.code})"


class Federation:
    """Messages to partitions, replies by partition, bytes both ways, and who failed with what."""

    def __init__(self, grid: Grid, *, round_timeout: float | None, stage_timeout: float | None) -> None:
        self.grid, self.round_timeout, self.stage_timeout = grid, round_timeout, stage_timeout
        self.nodes: dict[int, int] = {}
        """partition → node id, learnt from the setup's replies."""

    def discover(self, *, moments: bool, dp_moments: bool = False) -> Exchange:
        """Ask every connected node for its class counts (and, with `moments`, its sums and outer
        products; with `dp_moments`, a private client's Gaussian release of them); learn which
        partition each node holds. A node's error is keyed by its node id (its partition is what
        it failed to say)."""
        node_ids = sorted(self.grid.get_node_ids())
        content = RecordDict({"config": ConfigRecord({"moments": moments, "dp-moments": dp_moments})})
        messages = [Message(content, node, "query.statistics", group_id="setup") for node in node_ids]
        exchange = Exchange(down_bytes=sum(message_bytes(m) for m in messages))
        for reply in self.grid.send_and_receive(messages, timeout=self.stage_timeout):
            if reply.has_error():
                exchange.errors[f"on node {reply.metadata.src_node_id}"] = error_text(reply)
                continue
            partition = int(reply.content["metrics"]["partition-id"])
            self.nodes[partition] = reply.metadata.src_node_id
            exchange.replies[partition] = reply.content
            exchange.up_bytes += message_bytes(reply)
        return exchange

    def send(self, message_type: str, contents: dict[int, RecordDict], *, group: str, stage: bool = False) -> Exchange:
        """`stage`: the setup or warm-up's longer timeout instead of a round's."""
        messages = [Message(content, self.nodes[p], message_type, group_id=group) for p, content in sorted(contents.items())]
        exchange = Exchange(down_bytes=sum(message_bytes(m) for m in messages))
        partition_of = {node: p for p, node in self.nodes.items()}
        timeout = self.stage_timeout if stage else self.round_timeout
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            partition = partition_of.get(reply.metadata.src_node_id)
            if partition is None:
                continue
            if reply.has_error():
                exchange.errors[str(partition)] = error_text(reply)
                continue
            exchange.replies[partition] = reply.content
            exchange.up_bytes += message_bytes(reply)
        exchange.missing = sorted(set(contents) - set(exchange.replies))
        return exchange


def round_sample(seed: int, server_round: int, partitions: list[int], count: int, drop_rate: float) -> tuple[list[int], list[int]]:
    """The round's clients, and those the fault injector silences: seeded by (seed, round) only,
    so a resumed run and a deployed one draw what the simulation drew."""
    rng = np.random.default_rng([seed, 7, server_round])
    sampled = sorted(int(p) for p in rng.choice(partitions, size=min(count, len(partitions)), replace=False))
    failing = sorted(int(p) for p in rng.choice(sampled, size=round(drop_rate * len(sampled)), replace=False))
    return sampled, failing


def round_config(server_round: int, *, failing: bool, **extra: int | float | str | bool) -> ConfigRecord:
    return ConfigRecord({"round": server_round, "simulate-failure": failing, **extra})
