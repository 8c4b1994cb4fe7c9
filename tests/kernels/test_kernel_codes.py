"""The Triton kernels' choice codes (`awpo_kernels/_kernel_codes.py`) cannot drift from the options or the kernels.

A kernel's choice parameter (ESTIMATOR, GATE, ...) is an int constexpr; the launcher turns an option's value
into it through an explicit table, and the kernel branches on it. Once the codes came from the position of a
value in its `Literal`, so a value inserted anywhere but at the end would have run another value's math.
Checked here: every allowed value of every choice option has a code, the codes are distinct, the tables use
the named constants, and the kernels compare their choice parameters against those names only, with one
branch per code (read from the source with `ast`). What each branch computes is checked against the
reference by the op suites, for every value (test_advantages.py and test_policy_loss.py check that their
cases cover every value; the interpreter and CUDA runs execute them on the kernels).
"""
from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
import triton.language as tl

import awpo_kernels as ak
from awpo_kernels import _kernel_codes as codes

PACKAGE = Path(ak.__file__).parent
KERNEL_MODULES = ("_advantages_triton.py", "_epilogue_triton.py")
A, L = ak.AdvantageOptions, ak.LossOptions

# Kernel parameter -> (the option's allowed values, the table of its codes).
OPTION_TABLES = {
    "ESTIMATOR": (A.ESTIMATORS, codes.ESTIMATOR_CODES),
    "GATE": (A.GATES, codes.GATE_CODES),
    "WEIGHT": (A.WEIGHTS, codes.WEIGHT_CODES),
    "SCALE_BY_STD": (A.SCALES, codes.SCALE_CODES),
    "CLIP_SIGN": (A.CLIPS, codes.CLIP_CODES),
    "KL_TYPE": (L.KL_TYPES, codes.KL_TYPE_CODES),
}
# Choice options that no kernel branches on: the torch math handles them (the aggregation weights, and
# LossSpec.sequence_level, a flag of both paths).
NOT_KERNEL_CODES = {L.LOSS_TYPES, L.IMPORTANCE_SAMPLING_LEVELS}
# Kernel parameters compared against named codes -> the prefix of their constants in _kernel_codes.
CODE_FAMILIES = {"ESTIMATOR": "ESTIMATOR_", "GATE": "GATE_", "WEIGHT": "WEIGHT_", "KL_TYPE": "KL_",
                 "COEFFICIENTS": "COEFFICIENTS_"}
# Codes that no option value maps to: KL_NONE (beta == 0), the source of the epilogue's coefficients.
EXTRA_CODES = {"KL_TYPE": {"KL_NONE"}, "COEFFICIENTS": {"COEFFICIENTS_NONE", "COEFFICIENTS_GIVEN", "COEFFICIENTS_LOSS"}}


def family(parameter: str) -> dict[str, int]:
    """The named constants of a kernel parameter: name -> value."""
    prefix = CODE_FAMILIES[parameter]
    return {name: value.value for name, value in vars(codes).items()
            if name.startswith(prefix) and isinstance(value, tl.constexpr)}


def choice_tuples(cls) -> set[tuple]:
    """The allowed-value tuples an options class declares (its ClassVar tuples of strings)."""
    found = set()
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        value = getattr(cls, name, None)
        if typing.get_origin(hint) is typing.ClassVar and isinstance(value, tuple):
            found.add(value)
    return found


def test_every_choice_option_is_either_coded_or_handled_by_torch():
    """A new choice option must be given a kernel table here, or be declared kernel-free."""
    declared = choice_tuples(A) | choice_tuples(L)
    assert declared == {allowed for allowed, _ in OPTION_TABLES.values()} | NOT_KERNEL_CODES


@pytest.mark.parametrize("parameter", OPTION_TABLES)
def test_every_allowed_value_has_exactly_one_distinct_code(parameter):
    allowed, table = OPTION_TABLES[parameter]
    assert len(set(allowed)) == len(allowed) and set(table) == set(allowed), parameter
    assert len(set(table.values())) == len(table), f"{parameter}: two values share a code: {table}"
    kind = bool if parameter in ("SCALE_BY_STD", "CLIP_SIGN") else int  # flags, or int codes
    assert all(type(code) is kind for code in table.values()), table


@pytest.mark.parametrize("parameter", CODE_FAMILIES)
def test_each_parameter_has_distinct_named_codes_and_its_table_uses_them(parameter):
    named = family(parameter)
    assert named and len(set(named.values())) == len(named), f"{parameter}: codes not distinct: {named}"
    extra = EXTRA_CODES.get(parameter, set())
    assert extra <= set(named)
    option_codes = {value for name, value in named.items() if name not in extra}
    table = OPTION_TABLES[parameter][1] if parameter in OPTION_TABLES else {}
    assert set(table.values()) == option_codes, f"{parameter}: table {table} vs named codes {named}"


# ----------------------------------------------------------------------------- the kernels' source

def module_tree(filename: str) -> ast.Module:
    return ast.parse((PACKAGE / filename).read_text(), filename=filename)


def code_comparisons(tree: ast.Module):
    """(parameter, other operand) for every comparison in `tree` that involves a coded parameter."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            names = [op.id for op in operands if isinstance(op, ast.Name) and op.id in CODE_FAMILIES]
            for parameter in names:
                for other in operands:
                    if not (isinstance(other, ast.Name) and other.id == parameter):
                        yield parameter, other


def test_kernels_compare_their_choice_parameters_only_against_named_codes():
    compared = {parameter: set() for parameter in CODE_FAMILIES}
    for filename in KERNEL_MODULES:
        for parameter, other in code_comparisons(module_tree(filename)):
            where = f"{filename}:{other.lineno}: {parameter} compared with {ast.unparse(other)}"
            assert isinstance(other, ast.Name), f"{where}: compare against a _kernel_codes name, not a literal"
            assert other.id in family(parameter), f"{where}: not one of its codes {sorted(family(parameter))}"
            compared[parameter].add(other.id)
    for parameter, names in compared.items():
        # one branch per code: a code without a branch would fall into another code's math
        assert names == set(family(parameter)), f"{parameter}: no branch for {set(family(parameter)) - names}"


def test_kernel_launches_pass_no_literal_codes():
    """The launchers set the coded constexprs from the tables or the named codes, never from a literal."""
    for filename in KERNEL_MODULES:
        for node in ast.walk(module_tree(filename)):
            if isinstance(node, ast.keyword) and node.arg in CODE_FAMILIES:
                assert not isinstance(node.value, ast.Constant), \
                    f"{filename}:{node.value.lineno}: {node.arg}={ast.unparse(node.value)}"


def test_the_code_chains_end_in_a_static_assert():
    """Each parameter's chain of branches fails the build on an unknown code instead of running the last branch."""
    asserted = set()
    for filename in KERNEL_MODULES:
        for node in ast.walk(module_tree(filename)):
            if isinstance(node, ast.If) and node.orelse and len(node.orelse) == 1:
                call = node.orelse[0]
                if isinstance(call, ast.Expr) and ast.unparse(call.value).startswith("tl.static_assert(False"):
                    test = node.test
                    if isinstance(test, ast.Compare) and isinstance(test.left, ast.Name):
                        asserted.add(test.left.id)
    assert asserted == set(CODE_FAMILIES), asserted
