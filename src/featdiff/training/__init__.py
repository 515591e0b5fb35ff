"""Training loops. Each exposes a step function of (model, optimizer, batch, config) so that
DP-SGD can wrap it and a federated client can call it; the loops around them add batching,
checkpoints and progress bars."""
