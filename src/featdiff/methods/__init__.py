"""Methods: each is one module of this package, named after the method, with one entry point
`run(context) -> MethodResult` and optionally its config `rules` and a `preflight`; found by name
in `featdiff.method_catalog`, which tells how to add one. Shared stages live in
`featdiff.methods.stages` (not a method)."""
