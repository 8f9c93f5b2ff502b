"""The shape of the package (docs/architecture.md): the layers hold, no module is part of an import cycle, and an
import inside a function says why it is there."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "genforge"


def test_the_layer_contracts_hold():
    """import-linter's contracts (pyproject.toml): a module that imports a layer above its own fails here, with the
    chain of module names that runs upward."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=PACKAGE.parents[1])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_is_part_of_an_import_cycle():
    """Module by module, imports inside functions included (a package's __init__ counts as the package)."""
    assert _cycles(grimp.build_graph("genforge")) == []


def _function_imports(path: Path):
    lines = path.read_text().splitlines()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for statement in ast.walk(node):
                if isinstance(statement, (ast.Import, ast.ImportFrom)):
                    yield node, statement, lines


def test_an_import_inside_a_function_gives_its_reason():
    """Only optional dependencies and measured start-up cost justify an import inside a function; either way a
    `# deferred: ...` comment says which: on the import or above it within the function, or, for a module whose
    functions all defer for one reason (the CLI's commands), once at the module's top level."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module_wide = any(line.startswith("# deferred:") for line in path.read_text().splitlines())
        for function, statement, lines in _function_imports(path):
            above = lines[function.lineno - 1:statement.end_lineno]
            if not module_wide and not any("# deferred" in line for line in above):
                unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{statement.lineno} in {function.name}()")
    assert unexplained == [], "\n".join(unexplained)
