from .._checks import positive_scalar
from ..models import model_method
from ..models._protocol import class_path


def known(model, problem=None, *, ratio=1.0) -> dict:
    """The conservation laws `model` declares, by name: its `known_invariants`
    (the model protocol, `flowgap.models.PROTOCOL`), so a user's model that defines
    that method is served like flowgap's own.

    Each value is a function model → array. Data-dependent (mirror) laws appear only
    when `problem` (anything with `.inputs`) is given; the polar mirror law uses the
    rate ratio `ratio` = ρ the model is trained at. An empty dict means none is
    claimed (e.g. a tanh `TwoLayer`).
    """
    ratio = positive_scalar("ratio", ratio)
    declared = model_method(model, "known_invariants")
    if declared is None:
        raise ValueError(
            f"`model` ({class_path(model)}) does not define `known_invariants`; "
            "define it (see flowgap.models.PROTOCOL), write its invariants directly "
            "or derive them with `flowgap.invariants` symmetries."
        )
    inputs = None if problem is None else problem.inputs
    return dict(declared(inputs, ratio=ratio))
