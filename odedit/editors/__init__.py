"""Editors: base editors (FT-L, LoRA) behind one small interface, the ODEdit wrapper, and the
optimisation loop that drives either. A new base editor is one module plus one line in
`registry.BASE_EDITORS`."""
