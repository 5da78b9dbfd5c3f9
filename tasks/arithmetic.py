"""The built-in `arithmetic` task: integer expressions generated from a seed, graded by difficulty.

Levels (operands are integers; every answer is an exact integer):
    1  two operands, + or -                      "What is 37 + 58?"
    2  two operands, +, - or *                    "What is 12 * 7?"
    3  three operands, order of operations        "What is 4 + 6 * 3?"
    4  four operands with parentheses             "What is (8 - 3) * 4 + 9?"
    5  five operands, nested parentheses          "What is 2 * (3 + (7 - 4) * 5) - 6?"

`operands` overrides a level's number of operands and keeps its other rules: level 3 with 4
operands ("What is 11 * 9 - 16 + 20?") is harder than anything in levels 1-3 by length alone,
with no parentheses, which only levels 4-5 use.

Rows have the columns of NuminaMath-TIR: `problem`, and `solution` ending in `\\boxed{answer}`; plus
`answer` (int) and `level`. A problem belongs to the test split when a hash of its text says so, so
train and test never share a problem, whatever seeds and sizes are asked for.

`worked_solution` writes the R1 cold-start format: a `<think>` with one numbered step per operation
in the order of operations (parentheses first, then * before + and -, left to right), then
`<answer>N</answer>`.
"""
import hashlib
import random
from dataclasses import dataclass

PRECEDENCE = {"+": 1, "-": 1, "*": 2}
LEVEL_OPERANDS = {1: 2, 2: 2, 3: 3, 4: 4, 5: 5}
TEST_SHARE = 10  # one problem in ten (by hash) is held out


@dataclass(frozen=True)
class Num:
    value: int


@dataclass(frozen=True)
class Op:
    op: str
    left: "Num | Op"
    right: "Num | Op"


def evaluate(node) -> int:
    if isinstance(node, Num):
        return node.value
    a, b = evaluate(node.left), evaluate(node.right)
    return a + b if node.op == "+" else a - b if node.op == "-" else a * b


def needs_parens(child, parent: Op, is_right: bool) -> bool:
    if not isinstance(child, Op):
        return False
    if PRECEDENCE[child.op] < PRECEDENCE[parent.op]:
        return True
    # a - (b + c) and a - (b - c) need them; a + (b + c) does not change meaning without them
    return is_right and PRECEDENCE[child.op] == PRECEDENCE[parent.op] and parent.op == "-"


def render(node) -> str:
    if isinstance(node, Num):
        return str(node.value) if node.value >= 0 else f"({node.value})"
    left, right = render(node.left), render(node.right)
    if needs_parens(node.left, node, False):
        left = f"({left})"
    if needs_parens(node.right, node, True):
        right = f"({right})"
    return f"{left} {node.op} {right}"


def random_expression(rng: random.Random, level: int, operands: int | None = None):
    ops = "+-" if level == 1 else "+-*"
    leaves = [Num(rng.randint(1, 99 if level <= 2 else 20)) for _ in range(operands or LEVEL_OPERANDS[level])]
    # combine random neighbours until one tree is left: any bracketing can come out
    while len(leaves) > 1:
        i = rng.randrange(len(leaves) - 1)
        op = rng.choice(ops)
        if op == "*" and level >= 3:  # keep products small enough to do in one's head
            small = Num(rng.randint(2, 9))
            leaves[i + 1] = small if isinstance(leaves[i + 1], Num) else leaves[i + 1]
        leaves[i:i + 2] = [Op(op, leaves[i], leaves[i + 1])]
    return left_associate(leaves[0])


def left_associate(node):
    """a + (b - c) -> (a + b) - c and a * (b * c) -> (a * b) * c: same value, and the rendered
    expression (which drops those parentheses) is then worked left to right."""
    if isinstance(node, Num):
        return node
    node = Op(node.op, left_associate(node.left), left_associate(node.right))
    right = node.right
    if (node.op in "+*" and isinstance(right, Op)
            and PRECEDENCE[right.op] == PRECEDENCE[node.op]):
        return left_associate(Op(right.op, Op(node.op, node.left, right.left), right.right))
    return node


def has_parens(node) -> bool:
    return "(" in render(node).replace("(-", "")


def fits_level(node, level: int) -> bool:
    if level <= 3 and has_parens(node):
        return False
    if level == 3:
        return len({n for n in "+-*" if n in render(node)}) >= 2
    if level >= 4:
        return has_parens(node) and (level == 4 or render(node).count("(") >= 2)
    return True


def reduction_steps(node) -> list[tuple[str, int, str]]:
    """[(operation, value, expression after it)] in the order of operations."""
    steps = []
    while isinstance(node, Op):
        target = _next_reducible(node)
        value = evaluate(target)
        node = _replace(node, target, Num(value))
        a, b = target.left.value, target.right.value
        steps.append((f"{_num(a)} {target.op} {_num(b)}", value, render(node)))
    return steps


def _num(v: int) -> str:
    return str(v) if v >= 0 else f"({v})"


def _next_reducible(root: Op) -> Op:
    """The operation to do next: inside parentheses first, then higher precedence, then leftmost."""
    candidates = []  # (priority, order, node)

    def walk(node, in_parens: int):
        if not isinstance(node, Op):
            return
        for child, is_right in ((node.left, False), (node.right, True)):
            walk(child, in_parens + needs_parens(child, node, is_right))
        if isinstance(node.left, Num) and isinstance(node.right, Num):
            candidates.append(((in_parens, PRECEDENCE[node.op]), -len(candidates), node))

    walk(root, 0)
    return max(candidates, key=lambda c: (c[0], c[1]))[2]


def _replace(node, target, new):
    if node is target:
        return new
    if isinstance(node, Num):
        return node
    return Op(node.op, _replace(node.left, target, new), _replace(node.right, target, new))


def worked_solution(node) -> str:
    """The R1-format completion: numbered steps in <think>, the integer in <answer>."""
    lines = [f"We need to evaluate {render(node)}."]
    steps = reduction_steps(node)
    for k, (operation, value, rest) in enumerate(steps, 1):
        tail = "" if k == len(steps) else f", so the expression becomes {rest}"
        lines.append(f"Step {k}: {operation} = {value}{tail}.")
    return "<think>\n" + "\n".join(lines) + "\n</think>\n<answer>" + str(evaluate(node)) + "</answer>"


def split_of(problem: str) -> str:
    digest = hashlib.sha1(problem.encode()).digest()
    return "test" if digest[0] % TEST_SHARE == 0 else "train"


def make_row(node, level: int) -> dict:
    expression, answer = render(node), evaluate(node)
    problem = f"What is {expression}?"
    steps = " ".join(f"{op} = {v}." for op, v, _ in reduction_steps(node))
    return {"problem": problem, "solution": f"{steps} So {expression} = {answer}. "
            f"The answer is $\\boxed{{{answer}}}$.", "answer": answer, "level": level,
            "worked": worked_solution(node)}


def arithmetic_rows(split: str = "train", n: int = 1000, seed: int = 0,
                    levels: tuple[int, ...] = (1, 2, 3), operands: int | None = None) -> list[dict]:
    """`n` distinct problems of `split`, levels taken in turn, reproducible from `seed`; `operands`
    overrides the levels' numbers of operands."""
    if split not in ("train", "test"):
        raise ValueError(f"arithmetic split {split!r}: choose train or test")
    if not levels or any(level not in LEVEL_OPERANDS for level in levels):
        raise ValueError(f"arithmetic levels {levels}: each must be one of 1..5")
    if operands is not None and not 2 <= operands <= 8:
        raise ValueError(f"arithmetic operands {operands}: choose 2..8")
    # the seed string of the levels' own operand counts is kept, so their problems do not change
    rng = random.Random(f"{seed}-{split}" + (f"-{operands}ops" if operands else ""))
    rows, seen, tries = [], set(), 0
    while len(rows) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(f"could only make {len(rows)} distinct {split} problems at levels {levels}")
        level = levels[len(rows) % len(levels)]
        node = random_expression(rng, level, operands)
        problem = f"What is {render(node)}?"
        if problem in seen or split_of(problem) != split or not fits_level(node, level):
            continue
        seen.add(problem)
        rows.append(make_row(node, level))
    return rows
