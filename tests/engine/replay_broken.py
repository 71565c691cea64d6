"""A workflow module that cannot be imported: what ``duro replay --module`` reports as bad input."""

raise RuntimeError("this module fails on import")
