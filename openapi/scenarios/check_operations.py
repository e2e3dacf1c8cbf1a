"""Checks that a generated client has a function for every operation of the OpenAPI document and
a type for every schema of its components.

    python3 check_operations.py SPEC openapi-python-client DIR
    python3 check_operations.py SPEC openapi-generator DIR
    python3 check_operations.py SPEC openapi-typescript FILE

DIR is the generated package: openapi-python-client writes `api/<tag>/<operation>.py`,
openapi-generator `def <operation>(` in `api/*.py`, both `models/<schema>.py`; FILE is
openapi-typescript's declarations, with `<operationId>: {` in `operations` and `<Schema>:` in
`components`. Generators skip what they cannot parse with a warning and still exit 0, so a dropped
operation or model shows only here. Prints what is missing and exits 1 when anything is.
"""

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Whether the generated client has an operation (by operationId) or a schema (by name).
Has = Callable[[str], bool]


def snake_case(name: str) -> str:
    """`createSubAction` -> `create_sub_action`, `RiskCreate` -> `risk_create`, as both Python
    generators name functions and model modules."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def python_client(root: Path) -> tuple[Has, Has]:
    operations = {module.stem for module in root.glob("api/*/*.py")}
    models = {module.stem for module in root.glob("models/*.py")}
    return lambda operation: snake_case(operation) in operations, lambda schema: snake_case(schema) in models


def openapi_generator(root: Path) -> tuple[Has, Has]:
    source = "\n".join(module.read_text() for module in root.glob("api/*.py"))
    models = {module.stem for module in root.glob("models/*.py")}
    return (
        lambda operation: re.search(rf"^    def {snake_case(operation)}\(", source, re.M) is not None,
        lambda schema: snake_case(schema) in models,
    )


def typescript(declarations: Path) -> tuple[Has, Has]:
    text = declarations.read_text()
    schemas = text[text.index("export interface components {") : text.index("export interface operations {")]
    operations = text[text.index("export interface operations {") :]
    return (
        lambda operation: re.search(rf"^    {operation}: {{", operations, re.M) is not None,
        lambda schema: re.search(rf"^        {schema}: ", schemas, re.M) is not None,
    )


GENERATORS = {
    "openapi-python-client": python_client,
    "openapi-generator": openapi_generator,
    "openapi-typescript": typescript,
}


def main() -> int:
    spec, generator, generated = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    document = json.loads(spec.read_text())
    operations = [
        operation["operationId"]
        for path_item in document["paths"].values()
        for method, operation in path_item.items()
        if method in METHODS
    ]
    schemas = list(document["components"]["schemas"])
    has_operation, has_schema = GENERATORS[generator](generated)
    missing = [f"operation {name}" for name in operations if not has_operation(name)]
    missing += [f"schema {name}" for name in schemas if not has_schema(name)]
    if not operations or not schemas or missing:
        print(f"{generator}: missing {', '.join(missing) or 'everything: the document has no operations'}")
        return 1
    print(f"{generator}: all {len(operations)} operations and {len(schemas)} schemas generated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
