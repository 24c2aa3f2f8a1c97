"""What ``cog build`` reads from a project's ``predict.py``, read the way cog reads it.

Since cog 0.22 the CLI makes the image's OpenAPI schema *statically*: it parses ``predict.py``
with tree-sitter, without running it (replicate/cog ``pkg/schema/python``), and takes the
concurrency (``@cog.concurrent(max=N)``) and streaming (``@cog.streaming``) from the source too.
coglet then validates every input against that schema, answers SSE only where it says
``x-cog-streaming``, and runs as many predictions at once as ``COG_MAX_CONCURRENCY``, which
``cog build`` bakes into the image from the decorator.

So ``./serve`` gives the local Cog server the same two things, made the same way: this module
reads the predictor's declaration with Python's ``ast`` (:func:`read_predictor`) and writes the
document cog's generator writes (:func:`openapi_schema`). The tests compare both with what cog's
own generator printed for built projects (``tests/golden/cog-schema/``; docs/cog-build.md says
how that was made).

It reads what cog reads, in the forms a careful ``predict.py`` uses (ours is rendered that way):
literal defaults, bounds and descriptions; ``str``/``int``/``float``/``bool``, optional or not;
the decorators; the return type. Where cog would silently lose something (a default that is not
a literal makes the input *required*; an escape or an implicit concatenation in a description
reaches the schema mangled) or where this reader would have to guess (a type or a base class it
does not follow), it stops with a :class:`~lmtp_cog.errors.CogInterfaceError` naming the file,
line and input instead: a project it accepts means the same thing here and in the image.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtp_cog.errors import CogInterfaceError

COG_CLI_VERSION = "0.22.0"
"""The cog CLI whose generator this module follows (its version is the schema's
``info.version``); checked against its source, tag v0.22.0."""

PREDICTOR_REF = "predict.py:Predictor"
"""The predictor every generated project names in cog.yaml (``run:``)."""

_PRIMITIVES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
"""Python annotation → JSON type, for the input and output types this reader knows."""
_ITERATORS = {
    "Iterator": False,
    "AsyncIterator": False,
    "ConcatenateIterator": True,
    "AsyncConcatenateIterator": True,
}
"""Iterator return types cog streams, and whether each one concatenates (``str`` only)."""
_INPUT_KEYWORDS = {
    "default",
    "description",
    "ge",
    "le",
    "min_length",
    "max_length",
    "regex",
    "choices",
    "deprecated",
}


@dataclass(frozen=True)
class DeclaredInput:
    """One parameter of ``run()``, as cog reads it."""

    name: str
    order: int
    json_type: str
    """``string``, ``integer``, ``number`` or ``boolean``."""
    nullable: bool
    has_default: bool
    default: Any = None
    description: str | None = None
    ge: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    regex: str | None = None
    choices: tuple[Any, ...] | None = None
    deprecated: bool = False

    @property
    def required(self) -> bool:
        """What cog decides: a non-nullable input without a default must be given."""
        return not self.has_default and not self.nullable


@dataclass(frozen=True)
class DeclaredPredictor:
    """The Cog interface of a project, as ``cog build`` bakes it into the image."""

    method: str
    """``run``, or the deprecated ``predict``."""
    is_async: bool
    concurrency_max: int | None
    """``@cog.concurrent(max=N)``'s N; ``None`` without the decorator."""
    streaming: bool
    """``@cog.streaming``: the image answers SSE (``x-cog-streaming``)."""
    inputs: tuple[DeclaredInput, ...]
    output: dict[str, Any]
    """The ``Output`` schema."""
    warnings: tuple[str, ...] = ()
    """What ``cog build`` would warn about, in its words."""

    @property
    def max_concurrency(self) -> int:
        """``COG_MAX_CONCURRENCY`` in the image: the decorator's N, else 1 (coglet's default)."""
        return self.concurrency_max or 1


def read_predictor(project_dir: Path, predictor_ref: str = PREDICTOR_REF) -> DeclaredPredictor:
    """The interface ``cog build`` reads from ``predictor_ref`` (``FILE.py:CLASS``).

    Raises:
        CogInterfaceError: the file is missing or not Python, the class or its ``run`` is
            missing, or something in the declaration is not what cog reads as written (the
            message names the file, line and input, and what to write instead).
    """
    file_name, _, class_name = predictor_ref.partition(":")
    path = project_dir / file_name
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CogInterfaceError(f"{path} does not exist: cog.yaml's run: names it.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CogInterfaceError(f"{path} cannot be read ({error}).") from None
    return parse_predictor(source, path=path, class_name=class_name)


def parse_predictor(source: str, *, path: Path, class_name: str) -> DeclaredPredictor:
    """:func:`read_predictor` for source text; ``path`` only names it in errors."""
    try:
        module = ast.parse(source, filename=str(path))
    except SyntaxError as error:
        raise CogInterfaceError(f"{path}, line {error.lineno}: {error.msg}.") from None
    return _Reader(path, source, module).predictor(class_name)


def openapi_schema(predictor: DeclaredPredictor) -> dict[str, Any]:
    """The OpenAPI document ``cog build`` writes to ``.cog/openapi_schema.json`` for it.

    Key for key what cog 0.22's ``GenerateOpenAPISchema`` writes (``pkg/schema/openapi_spec.go``).
    """
    schemas: dict[str, Any] = {
        "Input": _input_schema(predictor.inputs),
        "Output": predictor.output,
    }
    for declared in predictor.inputs:
        if declared.choices is not None:
            schemas[declared.name] = {
                "title": declared.name,
                "description": "An enumeration.",
                "enum": list(declared.choices),
                "type": declared.json_type,
            }
    schemas |= {
        "PredictionRequest": {
            "title": "PredictionRequest",
            "type": "object",
            "properties": {
                "id": {"title": "Id", "type": "string"},
                "input": _ref("Input"),
            },
        },
        "PredictionResponse": _prediction_response(),
        "Status": {
            "title": "Status",
            "description": "An enumeration.",
            "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
            "type": "string",
        },
        "HTTPValidationError": {
            "title": "HTTPValidationError",
            "type": "object",
            "properties": {
                "detail": {"title": "Detail", "type": "array", "items": _ref("ValidationError")},
            },
        },
        "ValidationError": _validation_error(),
    }
    predict = {
        "summary": "Predict",
        "description": "Run a single prediction on the model",
        "operationId": "predict_predictions_post",
        "requestBody": _json_content(_ref("PredictionRequest")),
        "responses": {
            "200": {
                "description": "Successful Response",
                **_json_content(_ref("PredictionResponse")),
            },
            "422": {
                "description": "Validation Error",
                **_json_content(_ref("HTTPValidationError")),
            },
        },
    }
    if predictor.streaming:
        predict["x-cog-streaming"] = True
    anything = _json_content({})
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": COG_CLI_VERSION},
        "paths": {
            "/": {
                "get": {
                    "summary": "Root",
                    "operationId": "root__get",
                    "responses": {"200": {"description": "Successful Response", **anything}},
                }
            },
            "/health-check": {
                "get": {
                    "summary": "Healthcheck",
                    "operationId": "healthcheck_health_check_get",
                    "responses": {"200": {"description": "Successful Response", **anything}},
                }
            },
            "/predictions": {"post": predict},
            "/predictions/{prediction_id}/cancel": {"post": _cancel_operation()},
        },
        "components": {"schemas": schemas},
    }


# --- reading the source ---------------------------------------------------------------------------


class _Reader:
    """Reads one ``predict.py``; every error it raises names the file and the line."""

    def __init__(self, path: Path, source: str, module: ast.Module) -> None:
        self.path = path
        self.source = source
        self.module = module
        self.cog_modules, self.cog_names = _cog_imports(module)
        self.constants = _module_constants(module)

    def error(self, node: ast.AST, message: str) -> CogInterfaceError:
        line = getattr(node, "lineno", None)
        where = f"{self.path}, line {line}" if line else str(self.path)
        return CogInterfaceError(f"{where}: {message}")

    def predictor(self, class_name: str) -> DeclaredPredictor:
        classes = [
            node
            for node in self.module.body
            if isinstance(node, ast.ClassDef) and node.name == class_name
        ]
        if not classes:
            raise CogInterfaceError(
                f"{self.path} defines no class {class_name}: cog.yaml's run: names it."
            )
        methods = {
            node.name: node
            for node in classes[-1].body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        warnings = []
        if "run" in methods:
            method = methods["run"]
        elif "predict" in methods:
            method = methods["predict"]
            warnings.append(f"{class_name}.predict() is deprecated; use run() instead")
        else:
            raise self.error(
                classes[-1],
                f"{class_name} defines no run() method in its own body; write run() there "
                "(this reader does not follow base classes).",
            )
        is_async = isinstance(method, ast.AsyncFunctionDef)
        streaming, concurrency_max = self._decorators(method)
        if concurrency_max is not None and concurrency_max > 1 and not is_async:
            raise self.error(
                method, f"@cog.concurrent(max={concurrency_max}) needs an async def {method.name}."
            )
        output, iterates = self._output(method)
        if streaming and not iterates:
            raise self.error(
                method, "@cog.streaming needs an Iterator or ConcatenateIterator return type."
            )
        return DeclaredPredictor(
            method=method.name,
            is_async=is_async,
            concurrency_max=concurrency_max,
            streaming=streaming,
            inputs=tuple(self._inputs(method)),
            output=output,
            warnings=tuple(warnings),
        )

    # --- decorators and output ---

    def _decorators(
        self, method: ast.FunctionDef | ast.AsyncFunctionDef
    ) -> tuple[bool, int | None]:
        streaming, concurrency_max = False, None
        for decorator in method.decorator_list:
            call = decorator if isinstance(decorator, ast.Call) else None
            name = self._cog_name(call.func if call else decorator)
            if name == "streaming":
                streaming = True
            elif name == "concurrent":
                concurrency_max = self._concurrency(call)
        return streaming, concurrency_max

    def _concurrency(self, call: ast.Call | None) -> int:
        if call is None or (not call.args and not call.keywords):
            return 1
        keyword = call.keywords[0] if len(call.keywords) == 1 and not call.args else None
        value = keyword.value if keyword is not None and keyword.arg == "max" else None
        if not (isinstance(value, ast.Constant) and type(value.value) is int and value.value >= 1):
            raise self.error(
                call, "write @cog.concurrent(max=N) with N an integer literal of at least 1."
            )
        return value.value

    def _output(
        self, method: ast.FunctionDef | ast.AsyncFunctionDef
    ) -> tuple[dict[str, Any], bool]:
        """The ``Output`` schema, and whether the return type is an iterator."""
        annotation = method.returns
        if annotation is None:
            raise self.error(method, f"{method.name}() needs a return type annotation.")
        if isinstance(annotation, ast.Subscript):
            outer = _dotted(annotation.value).rpartition(".")[2]
            if outer in _ITERATORS:
                item = self._primitive(annotation.slice, what="the output's item type")
                if _ITERATORS[outer] and item != "string":
                    raise self.error(annotation, f"{outer} needs str items.")
                schema: dict[str, Any] = {
                    "items": {"type": item},
                    "title": "Output",
                    "type": "array",
                    "x-cog-array-type": "iterator",
                }
                if _ITERATORS[outer]:
                    schema["x-cog-array-display"] = "concatenate"
                return schema, True
        return {
            "title": "Output",
            "type": self._primitive(annotation, what="the output type"),
        }, False

    # --- inputs ---

    def _inputs(self, method: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[DeclaredInput]:
        arguments = method.args
        if arguments.vararg or arguments.kwarg or arguments.kwonlyargs or arguments.posonlyargs:
            raise self.error(method, f"{method.name}() may only take plain named inputs.")
        parameters = arguments.args[1:]  # after self
        defaults: list[ast.expr | None] = [None] * (len(parameters) - len(arguments.defaults))
        defaults += arguments.defaults
        for order, (parameter, default) in enumerate(zip(parameters, defaults, strict=True)):
            yield self._input(parameter, default, order)

    def _input(self, parameter: ast.arg, default: ast.expr | None, order: int) -> DeclaredInput:
        name = parameter.arg
        if parameter.annotation is None:
            raise self.error(parameter, f"input {name} needs a type annotation.")
        json_type, nullable = self._input_type(parameter.annotation, name)
        fields: dict[str, Any] = {}
        if isinstance(default, ast.Call) and self._cog_name(default.func) == "Input":
            fields = self._input_call(default, name)
        elif default is not None:
            fields = {"default": self._literal(default, name, "default")}
        has_default = "default" in fields and (fields["default"] is not None or nullable)
        if "default" in fields and not has_default:
            raise self.error(
                default or parameter,
                f"input {name} has the default None but a type that is not optional, so cog "
                f"build would make it required: annotate it {ast.unparse(parameter.annotation)} "
                "| None, or give another default.",
            )
        return DeclaredInput(
            name=name,
            order=order,
            json_type=json_type,
            nullable=nullable,
            has_default=has_default,
            **fields,
        )

    def _input_type(self, annotation: ast.expr, name: str) -> tuple[str, bool]:
        """The input's JSON type, and whether it is optional (``X | None``, ``Optional[X]``)."""
        inner, nullable = annotation, False
        if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
            sides = [annotation.left, annotation.right]
            others = [side for side in sides if not _is_none(side)]
            if len(others) == 1:
                inner, nullable = others[0], True
        elif isinstance(annotation, ast.Subscript):
            outer = _dotted(annotation.value).rpartition(".")[2]
            if outer == "Optional":
                inner, nullable = annotation.slice, True
            elif outer == "Union" and isinstance(annotation.slice, ast.Tuple):
                others = [item for item in annotation.slice.elts if not _is_none(item)]
                if len(others) == 1 and len(annotation.slice.elts) == 2:
                    inner, nullable = others[0], True
        return self._primitive(inner, what=f"the type of input {name}"), nullable

    def _primitive(self, node: ast.expr, *, what: str) -> str:
        name = _dotted(node)
        if name not in _PRIMITIVES:
            raise self.error(
                node,
                f"{what} is {ast.unparse(node)}; this reader knows str, int, float and bool "
                "(optional or not).",
            )
        return _PRIMITIVES[name]

    def _input_call(self, call: ast.Call, name: str) -> dict[str, Any]:
        if call.args:
            raise self.error(call, f"input {name}: cog ignores positional Input() arguments.")
        fields: dict[str, Any] = {}
        for keyword in call.keywords:
            key = keyword.arg
            if key not in _INPUT_KEYWORDS:
                raise self.error(keyword, f"input {name}: Input({key}=...) is not read by cog.")
            if key == "description" or key == "regex":
                fields[key] = self._text(keyword.value, name, key)
            elif key == "choices":
                value = self._literal(keyword.value, name, key)
                if not isinstance(value, list | tuple) or not value:
                    raise self.error(keyword, f"input {name}: choices must be a list literal.")
                fields[key] = tuple(value)
            else:
                fields[key] = self._literal(keyword.value, name, key)
        for key in ("ge", "le"):
            if key in fields and not _is_number(fields[key]):
                raise self.error(call, f"input {name}: {key} must be a number literal.")
        return fields

    def _literal(self, node: ast.expr, name: str, key: str) -> Any:
        """A literal value, or a same-file name assigned one (the two cog resolves)."""
        if isinstance(node, ast.Name) and node.id in self.constants:
            node = self.constants[node.id]
        try:
            value = ast.literal_eval(node)
        except ValueError:
            raise self.error(
                node,
                f"input {name}: {key}={ast.unparse(node)} is not a literal, and cog build reads "
                "only literals (it would drop the value and make the input required); write "
                "the value itself.",
            ) from None
        if isinstance(value, str):
            self._check_plain_string(node, name, key)
        return list(value) if isinstance(value, tuple) else value

    def _text(self, node: ast.expr, name: str, key: str) -> str:
        value = self._literal(node, name, key)
        if not isinstance(value, str):
            raise self.error(node, f"input {name}: {key} must be a string literal.")
        return value

    def _check_plain_string(self, node: ast.expr, name: str, key: str) -> None:
        """cog copies a string literal's text between its quotes: one literal, no escapes."""
        segment = ast.get_source_segment(self.source, node) or ""
        tokens = [
            token
            for token in tokenize.generate_tokens(io.StringIO(segment).readline)
            if token.type == tokenize.STRING
        ]
        if len(tokens) != 1 or segment.strip() != tokens[0].string:
            raise self.error(
                node,
                f"input {name}: write {key} as one string literal; cog drops or mangles "
                "concatenated or parenthesised strings.",
            )
        if "\\" in segment:
            raise self.error(
                node, f"input {name}: {key} holds a backslash, which cog does not decode."
            )

    def _cog_name(self, node: ast.expr) -> str | None:
        """``streaming`` for ``cog.streaming`` or a ``from cog import streaming``; else None."""
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return node.attr if node.value.id in self.cog_modules else None
        if isinstance(node, ast.Name):
            return self.cog_names.get(node.id)
        return None


def _cog_imports(module: ast.Module) -> tuple[set[str], dict[str, str]]:
    """The names ``cog`` is imported as, and the local names of ``from cog import X``."""
    modules: set[str] = set()
    names: dict[str, str] = {}
    for node in module.body:
        if isinstance(node, ast.Import):
            modules |= {alias.asname or alias.name for alias in node.names if alias.name == "cog"}
        elif isinstance(node, ast.ImportFrom) and node.module == "cog" and not node.level:
            names |= {alias.asname or alias.name: alias.name for alias in node.names}
    return modules, names


def _module_constants(module: ast.Module) -> dict[str, ast.expr]:
    """Top-level ``NAME = <literal>`` assignments, which cog resolves in ``Input(...)``."""
    constants = {}
    for node in module.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                try:
                    ast.literal_eval(node.value)
                except ValueError:
                    continue
                constants[target.id] = node.value
    return constants


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- the document -------------------------------------------------------------------------------


def _input_schema(inputs: tuple[DeclaredInput, ...]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for declared in inputs:
        prop: dict[str, Any] = {"x-order": declared.order}
        if declared.choices is not None:
            prop["allOf"] = [_ref(declared.name)]
        else:
            prop["title"] = _title(declared.name)
            prop["type"] = declared.json_type
        if declared.has_default:
            prop["default"] = declared.default
        if declared.nullable:
            prop["nullable"] = True
        for key, value in (
            ("description", declared.description),
            ("minimum", declared.ge),
            ("maximum", declared.le),
            ("minLength", declared.min_length),
            ("maxLength", declared.max_length),
            ("pattern", declared.regex),
        ):
            if value is not None:
                prop[key] = value
        if declared.deprecated:
            prop["deprecated"] = True
        properties[declared.name] = prop
    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    required = [declared.name for declared in inputs if declared.required]
    if required:
        schema["required"] = required
    return schema


def _title(name: str) -> str:
    """cog's ``TitleCase``: ``top_p`` → ``Top P`` (only first letters change)."""
    return " ".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _ref(component: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{component}"}


def _json_content(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": dict(schema)}}}


def _prediction_response() -> dict[str, Any]:
    def text(title: str) -> dict[str, str]:
        return {"title": title, "type": "string"}

    def when(title: str) -> dict[str, str]:
        return {"title": title, "type": "string", "format": "date-time"}

    return {
        "title": "PredictionResponse",
        "type": "object",
        "properties": {
            "input": _ref("Input"),
            "output": _ref("Output"),
            "id": text("Id"),
            "version": text("Version"),
            "created_at": when("Created At"),
            "started_at": when("Started At"),
            "completed_at": when("Completed At"),
            "status": text("Status"),
            "error": text("Error"),
            "logs": text("Logs"),
            "metrics": {"title": "Metrics", "type": "object"},
        },
    }


def _validation_error() -> dict[str, Any]:
    return {
        "title": "ValidationError",
        "required": ["loc", "msg", "type"],
        "type": "object",
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
        },
    }


def _cancel_operation() -> dict[str, Any]:
    return {
        "summary": "Cancel",
        "operationId": "cancel_predictions__prediction_id__cancel_post",
        "parameters": [
            {
                "required": True,
                "schema": {"title": "Prediction Id", "type": "string"},
                "name": "prediction_id",
                "in": "path",
            }
        ],
        "responses": {
            "200": {"description": "Successful Response", **_json_content({})},
            "422": {
                "description": "Validation Error",
                **_json_content(_ref("HTTPValidationError")),
            },
        },
    }
