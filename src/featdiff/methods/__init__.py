"""Methods: each is one module with one entry point `run(context) -> MethodResult`, found by name
in `featdiff.methods.registry`. Shared stages live in `featdiff.methods.stages`."""
