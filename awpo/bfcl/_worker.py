"""Runs INSIDE the BFCL venv: BFCL's own data loading, checkers and multi-turn loop, over JSON lines.

Started by ``awpo.bfcl.checker.BfclChecker`` as ``<bfcl-venv>/bin/python -I _worker.py``. It imports
only the standard library and ``bfcl_eval`` (the awpo package is not installed in that venv), and it
is the only place where BFCL ``eval()``s model-produced calls: a separate process by design.

Protocol, one JSON object per line. The parent sends ``{"op": NAME, ...}`` and reads back
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. While a ``multi_turn`` op runs,
the worker may instead send ``{"generate": [request, ...]}`` (one request per episode waiting for
the model) and waits for ``{"texts": [...], "errors": [...]}`` of the same length before going on.
``multi_turn`` and ``score`` also send ``{"progress": {...}}`` messages (a finished episode with its
outcome; the start of scoring, then each verdict), which let the parent time the work step by step.

Scoring calls BFCL's per-entry evaluation helpers from ``bfcl_eval.eval_checker.eval_runner`` (the
same functions ``bfcl evaluate`` runs), so verdicts are the official ones. The model is played by a
subclass of BFCL's ``QwenFCHandler``: its Hermes ``<tool_call>`` decoding is the official one, and its
``_query_prompting`` asks the parent for the completion instead of an HTTP server.

One deliberate addition, for multi-turn entries, where BFCL turns each decoded call into Python source
and ``eval()``s it inside its ``multi_turn_utils`` module (the model's output is untrusted): the worker
renders that source itself, and only for calls that pass ``_render_call``:

- the name must be one of the methods BFCL itself binds for the entry: the public methods of the
  entry's ``involved_classes`` (plain identifiers; BFCL's multi-turn function docs and ground truth
  use no dotted names), so ``re.match``, ``importlib.import_module``, ``open``, ``eval`` ... are refused;
- argument names must be identifiers (not keywords), and argument values plain JSON data
  (str, int, finite float, bool, None, and lists / str-keyed dicts of those, nested at most
  ``MAX_VALUE_DEPTH`` deep), written with ``repr``.

So the evaluated string is one call of a backend method with literal arguments. A step with a refused
call is treated like any other undecodable output: nothing in it runs, and the turn scores as one
without that call. This is NOT a sandbox: an allowed backend method still runs with the arguments
the model chose, and may be slow or memory-hungry (e.g. ``power`` with a huge exponent); the worker
has the user's file-system rights and no resource limits. Against hangs, the parent
(``BfclChecker``) kills and restarts a worker that does not answer within its request timeout.
Single-turn categories are scored by BFCL's AST checker, which compares calls without running them.
"""

from __future__ import annotations

import ast
import copy
import inspect
import itertools
import json
import keyword
import math
import os
import queue
import sys
import threading
import time
import traceback

REGISTERED_MODEL = "Qwen_Qwen3-8B-FC"  # a registered BFCL model whose handler parses Hermes tool calls
MAX_VALUE_DEPTH = 32  # nesting of lists / dicts in one argument value
SUPPORTED_PREFIXES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
                      "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
                      "live_irrelevance", "live_relevance", "multi_turn_base", "multi_turn_miss_func",
                      "multi_turn_miss_param", "multi_turn_long_context")
_unique_counter = itertools.count()


# --------------------------------------------------------------------------------------------
# BFCL imports (after BFCL_PROJECT_ROOT is set by the parent: bfcl_eval creates folders on import)
# --------------------------------------------------------------------------------------------

def _import_bfcl():
    global Language, ReturnFormat, eval_runner, multi_turn_utils, bfcl_utils, QwenFCHandler, override
    from bfcl_eval import utils as bfcl_utils
    from bfcl_eval.constants.enums import Language, ReturnFormat
    from bfcl_eval.eval_checker import eval_runner
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.model_handler.local_inference.qwen_fc import QwenFCHandler
    from overrides import override  # BFCL's handlers enforce @override on subclasses
    global SafeQwenFCHandler, ParentModelHandler
    SafeQwenFCHandler = _safe_handler_class()
    ParentModelHandler = _episode_handler_class()


def _safe_handler_class():
    class SafeQwenFCHandler(QwenFCHandler):
        """BFCL's Qwen-FC handler whose ``decode_execute`` (the source BFCL ``eval()``s for multi-turn)
        only renders calls of ``self.allowed_functions`` with literal arguments; anything else raises,
        which BFCL treats as an undecodable step. ``allowed_functions`` is None (refuse everything)
        until the entry being played or scored sets it."""

        allowed_functions: frozenset | None = None

        @override
        def decode_execute(self, result, has_tool_call_tag):
            tool_calls = self._extract_tool_calls(result)
            if type(tool_calls) is not list or any(type(item) is not dict for item in tool_calls):
                raise ValueError(f"Model did not return a list of function calls: {result}")
            return [_render_call(call, self.allowed_functions) for call in tool_calls]

    return SafeQwenFCHandler


def _render_call(call: dict, allowed) -> str:
    """``name(key=repr(value),...)``, exactly as BFCL's ``convert_to_function_call`` writes it, for a
    call of an allowed method with plain-data arguments; ValueError for anything else."""
    name, arguments = call.get("name"), call.get("arguments")
    if not isinstance(name, str) or not allowed or name not in allowed:
        raise ValueError(f"refused tool call: {name!r} is not a function of this entry")
    if isinstance(arguments, str):  # BFCL json-decodes string arguments
        try:
            arguments = json.loads(arguments)
        except ValueError as exc:
            raise ValueError(f"refused tool call {name}: arguments are not JSON ({exc})") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"refused tool call {name}: arguments must be an object, got {type(arguments).__name__}")
    parts = []
    for key, value in arguments.items():
        if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
            raise ValueError(f"refused tool call {name}: argument name {key!r} is not an identifier")
        _check_plain_value(value, f"{name}({key}=...)", 0)
        parts.append(f"{key}={value!r}")
    return f"{name}({','.join(parts)})"


def _check_plain_value(value, where: str, depth: int) -> None:
    if depth > MAX_VALUE_DEPTH:
        raise ValueError(f"refused tool call {where}: value nested deeper than {MAX_VALUE_DEPTH}")
    kind = type(value)
    if value is None or kind in (str, int, bool):
        return
    if kind is float:
        if not math.isfinite(value):  # repr gives `inf` / `nan`: names, not literals
            raise ValueError(f"refused tool call {where}: non-finite float {value!r}")
        return
    if kind is list:
        for item in value:
            _check_plain_value(item, where, depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"refused tool call {where}: dict key {key!r} is not a string")
            _check_plain_value(item, where, depth + 1)
        return
    raise ValueError(f"refused tool call {where}: {kind.__name__} is not plain data")


_METHOD_CACHE: dict = {}
_BACKEND_CLASSES: dict = {}


def _allowed_functions(involved_classes) -> frozenset:
    """The names BFCL's ``execute_multi_turn_func_call`` binds to an instance for these classes:
    the public methods of an instance of each class (computed the same way, cached per class)."""
    names = set()
    for class_name in involved_classes:
        if class_name not in _METHOD_CACHE:
            _METHOD_CACHE[class_name] = frozenset(
                name for name, _ in inspect.getmembers(_backend_class(class_name)(), predicate=inspect.ismethod)
                if not name.startswith("_"))
        names |= _METHOD_CACHE[class_name]
    return frozenset(names)


def _backend_class(class_name: str) -> type:
    """The BFCL multi-turn backend class of that name, imported once."""
    if class_name not in _BACKEND_CLASSES:
        import importlib

        from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

        if class_name not in CLASS_FILE_PATH_MAPPING:
            raise ValueError(f"unknown BFCL backend class {class_name!r}")
        _BACKEND_CLASSES[class_name] = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)
    return _BACKEND_CLASSES[class_name]


def _new_handler(handler_class=None, model_name: str = "Qwen/Qwen3-8B", **attributes):
    """A handler of ``handler_class`` (default: ``SafeQwenFCHandler``) set up as BFCL builds its registered model's."""
    handler = (handler_class or SafeQwenFCHandler)(model_name=model_name, temperature=0.0,
                                                   registry_name=REGISTERED_MODEL, is_fc_model=True)
    for key, value in attributes.items():
        setattr(handler, key, value)
    return handler


def _unique_model_name() -> str:
    # Multi-turn backends are cached in a module dict keyed by model name + entry id: a fresh name per
    # episode / scoring keeps runs from seeing each other's state. The trailing "x" keeps prefixes unique.
    return f"awpo_{os.getpid()}_{next(_unique_counter)}x"


def _forget_instances(model_name: str) -> None:
    for key in [k for k in vars(multi_turn_utils) if k.startswith(model_name + "_")]:
        delattr(multi_turn_utils, key)


class _FakeCompletion:
    """The two attributes of an OpenAI completions response that BFCL's handler reads."""

    def __init__(self, text: str, prompt_tokens: int = 0, completion_tokens: int = 0):
        self.choices = [type("Choice", (), {"text": text})()]
        self.usage = type("Usage", (), {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})()


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def _check_category(category: str) -> str:
    if category not in SUPPORTED_PREFIXES:
        raise ValueError(f"unsupported BFCL category {category!r}; supported: {', '.join(SUPPORTED_PREFIXES)}")
    return category


_ENTRY_CACHE: dict = {}


def _cached_entries(category: str, *, for_generation: bool) -> list[dict]:
    """The category's entries, loaded once per worker; shared: callers copy what they change."""
    key = (category, for_generation)
    if key not in _ENTRY_CACHE:
        _ENTRY_CACHE[key] = _load_entries(category, for_generation)
    return _ENTRY_CACHE[key]


def _entries(category: str, *, for_generation: bool) -> list[dict]:
    return copy.deepcopy(_cached_entries(category, for_generation=for_generation))


def _load_entries(category: str, for_generation: bool) -> list[dict]:
    # Generation sees BFCL's language hints in the function docs; scoring uses the raw docs, as BFCL does.
    entries = bfcl_utils.load_dataset_entry(category, include_prereq=False,
                                            include_language_specific_hint=for_generation)
    if bfcl_utils.is_relevance_or_irrelevance(category):
        answers = [{"ground_truth": []} for _ in entries]
    else:
        answers = bfcl_utils.load_ground_truth_entry(category)
    if len(answers) != len(entries):
        raise RuntimeError(f"{category}: {len(entries)} entries but {len(answers)} possible answers")
    for entry, answer in zip(entries, answers):  # BFCL aligns them by position, not by id
        entry["ground_truth"] = answer["ground_truth"]
    return entries


def _select(entries: list[dict], ids, limit) -> list[dict]:
    if ids is not None:
        by_id = {entry["id"]: entry for entry in entries}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(f"unknown entry ids: {missing[:5]}")
        return [by_id[i] for i in ids]
    return entries if limit is None else entries[: int(limit)]


def op_load(category: str, ids=None, limit=None) -> list[dict]:
    return _select(_entries(_check_category(category), for_generation=True), ids, limit)


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------

def op_score(category: str, items: list[dict], channel=None) -> list[dict]:
    """Official verdicts. Each item: {"id", "result"} plus, for entries not in BFCL, inline
    "function" / "ground_truth" (and "initial_config" / "involved_classes" for multi-turn).
    Single-turn results are raw completions; multi-turn results are BFCL's per-turn, per-step
    model responses (what the ``multi_turn`` op returns).

    With a channel, reports ``{"progress": {"scoring": 0}}`` once the data is loaded and
    ``{"progress": {"verdict": ...}}`` after each item, so that the parent can time items one by one."""
    _check_category(category)
    # read-only: _entry_for_item copies the entry it uses
    known = {entry["id"]: entry for entry in _cached_entries(category, for_generation=False)}
    handler = _new_handler()  # stateless for decoding; building one per item would cost an HTTP client each
    verdicts = []
    if channel is not None:
        channel.send({"progress": {"scoring": 0}})
    for item in items:
        try:
            entry = _entry_for_item(item, known)
            verdicts.append(_score_one(handler, category, entry, item["result"]))
        except Exception as exc:  # one broken item must not sink the batch
            verdicts.append({"id": item.get("id"), "valid": False, "error": [f"{type(exc).__name__}: {exc}"],
                             "error_type": "awpo:checker_exception"})
        if channel is not None:
            channel.send({"progress": {"verdict": verdicts[-1]}})
    return verdicts


def _entry_for_item(item: dict, known: dict) -> dict:
    if "function" in item or "ground_truth" in item:
        entry = {key: value for key, value in item.items() if key != "result"}
        entry.setdefault("question", [[]])
        return copy.deepcopy(entry)
    if item.get("id") not in known:
        raise ValueError(f"unknown entry id {item.get('id')!r} and no inline function/ground_truth")
    return copy.deepcopy(known[item["id"]])


def _score_one(handler, category: str, entry: dict, result) -> dict:
    ground_truth = entry.pop("ground_truth", None)
    if bfcl_utils.is_multi_turn(category):
        model_name = _unique_model_name()
        handler.allowed_functions = _allowed_functions(entry["involved_classes"])
        try:
            verdict = eval_runner._evaluate_single_multi_turn_entry(
                handler, entry["id"], result, ground_truth, entry, model_name, category)
        finally:
            handler.allowed_functions = None
            _forget_instances(model_name + "_eval")
            _forget_instances(model_name + "_ground_truth_eval")
    else:
        if not isinstance(result, str):
            raise ValueError(f"single-turn result must be the completion text, got {type(result).__name__}")
        # BFCL stores the handler's parsed response (the text after </think>), not the raw completion.
        response = handler._parse_query_response_prompting(_FakeCompletion(result))["model_responses"]
        if bfcl_utils.is_relevance_or_irrelevance(category):
            verdict = eval_runner._evaluate_single_relevance_entry(
                handler, entry["id"], response, entry, REGISTERED_MODEL, category)
        else:
            verdict = eval_runner._evaluate_single_ast_entry(
                handler, entry["id"], response, ground_truth, entry, REGISTERED_MODEL, category,
                language=Language.PYTHON, return_format=ReturnFormat.PYTHON, has_tool_call_tag=False)
    return _summarize(entry["id"], verdict)


def _summarize(entry_id, verdict: dict) -> dict:
    if verdict.get("valid"):
        return {"id": entry_id, "valid": True, "error": None, "error_type": None}
    details = verdict.get("error")
    error_type = verdict.get("error_type")
    if isinstance(details, dict):  # multi-turn: the checker's result dict
        error_type = details.get("error_type", error_type)
        details = details.get("error_message", details.get("error"))
    if not isinstance(details, list):
        details = [details]
    return {"id": entry_id, "valid": False, "error": [_jsonable(d) for d in details], "error_type": error_type}


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


# --------------------------------------------------------------------------------------------
# multi-turn episodes driven by the parent's model
# --------------------------------------------------------------------------------------------

class _Gateway:
    """Collects the generation requests of concurrent episodes and sends them to the parent in batches."""

    def __init__(self, channel):
        self.channel = channel
        self.events: queue.Queue = queue.Queue()

    def ask(self, request: dict) -> dict:
        slot = {"done": threading.Event()}
        self.events.put(("generate", request, slot))
        slot["done"].wait()
        return slot

    def serve(self, episodes: list[dict], run_episode, max_concurrency: int) -> list[dict]:
        waiting, results = [], {}
        todo = list(episodes)
        running = 0
        while todo or running:
            while todo and running < max_concurrency:
                entry = todo.pop(0)
                threading.Thread(target=self._run, args=(run_episode, entry), daemon=True).start()
                running += 1
            kind, payload, slot = self.events.get()
            if kind == "finished":
                results[payload["id"]] = payload
                running -= 1
                # the outcome travels with the progress report: a parent that has to kill this worker
                # (timeout) keeps the episodes that had already finished
                self.channel.send({"progress": {"id": payload["id"], "finished": len(results),
                                                "total": len(episodes), "outcome": payload}})
            else:
                waiting.append((payload, slot))
            if waiting and len(waiting) == running:  # every live episode waits for the model
                self._answer(waiting)
                waiting = []
        return [entry["id"] for entry in episodes]  # outcomes were sent with the progress reports

    def _run(self, run_episode, entry):
        try:
            outcome = run_episode(entry)
        except BaseException as exc:  # the serving loop must always hear that an episode ended
            outcome = {"id": entry["id"], "result": None, "error": f"{type(exc).__name__}: {exc}"}
        self.events.put(("finished", outcome, None))

    def _answer(self, waiting):
        reply = self.channel.exchange({"generate": [request for request, _ in waiting]})
        texts, errors = reply.get("texts"), reply.get("errors") or [None] * len(waiting)
        if not isinstance(texts, list) or len(texts) != len(waiting) or len(errors) != len(waiting):
            raise RuntimeError(f"parent answered {len(texts or [])} texts for {len(waiting)} requests")
        for (_, slot), text, error in zip(waiting, texts, errors):
            slot["text"], slot["error"] = text, error
            slot["done"].set()


def _conversation_position(messages: list[dict]) -> tuple[int, int]:
    """(turn, step) of the next model call: user messages open turns, assistant messages are steps."""
    turn, step = -1, 0
    for message in messages:
        if message.get("role") == "user":
            turn, step = turn + 1, 0
        elif message.get("role") == "assistant":
            step += 1
    return max(turn, 0), step


def _episode_handler_class():
    class ParentModelHandler(SafeQwenFCHandler):
        """BFCL's multi-turn loop, with the parent process as the model."""

        @override
        def _query_prompting(self, inference_data: dict):
            started = time.time()
            messages = copy.deepcopy(inference_data["message"])
            turn, step = _conversation_position(messages)
            slot = self.gateway.ask({"entry_id": self.entry_id, "turn": turn, "step": step,
                                     "messages": _jsonable(messages),
                                     "tools": _jsonable(inference_data["function"])})
            if slot.get("error") is not None or not isinstance(slot.get("text"), str):
                raise RuntimeError(f"generation failed: {slot.get('error') or 'no text returned'}")
            return _FakeCompletion(slot["text"]), time.time() - started

    return ParentModelHandler


def op_multi_turn(category: str, ids=None, limit=None, max_concurrency: int = 8, channel=None) -> list[str]:
    """Plays the entries; returns their ids in order. Each outcome ``{"id", "result", "error"}`` is sent
    with the ``progress`` report of its episode."""
    _check_category(category)
    if not bfcl_utils.is_multi_turn(category):
        raise ValueError(f"multi_turn op needs a multi_turn_* category, got {category!r}")
    entries = _select(_entries(category, for_generation=True), ids, limit)
    gateway = _Gateway(channel)

    def run_episode(entry):
        model_name = _unique_model_name()
        handler = _new_handler(ParentModelHandler, model_name_underline_replaced=model_name, gateway=gateway,
                               entry_id=entry["id"], allowed_functions=_allowed_functions(entry["involved_classes"]))
        episode = {key: value for key, value in copy.deepcopy(entry).items() if key != "ground_truth"}
        try:
            responses, _ = handler.inference(episode, include_input_log=False, exclude_state_log=True)
            return {"id": entry["id"], "result": responses, "error": None}
        except Exception as exc:
            return {"id": entry["id"], "result": None, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            _forget_instances(model_name)

    return gateway.serve(entries, run_episode, max(1, int(max_concurrency)))


def op_ground_truth_calls(category: str, ids=None, limit=None) -> list[dict]:
    """Multi-turn ground truths as structured calls: [{"id", "turns": [[{"name", "arguments"}]]}].
    Read with ``ast`` (never eval); positional arguments are named from the backend's signature."""
    _check_category(category)
    if not bfcl_utils.is_multi_turn(category):
        raise ValueError(f"ground_truth_calls needs a multi_turn_* category, got {category!r}")
    out = []
    for entry in _select(_entries(category, for_generation=False), ids, limit):
        methods = {}
        for class_name in entry["involved_classes"]:
            backend = _backend_class(class_name)
            methods.update({name: fn for name, fn in inspect.getmembers(backend, inspect.isfunction)
                            if not name.startswith("_")})
        turns = [[_parse_call_source(source, methods) for source in turn] for turn in entry["ground_truth"]]
        out.append({"id": entry["id"], "turns": turns})
    return out


def _parse_call_source(source: str, methods: dict) -> dict:
    node = ast.parse(source.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain function call: {source!r}")
    name = node.func.id
    if name not in methods:
        raise ValueError(f"{name!r} is not a method of the involved backends")
    parameters = [p for p in inspect.signature(methods[name]).parameters if p != "self"]
    arguments = {parameters[i]: ast.literal_eval(arg) for i, arg in enumerate(node.args)}
    arguments.update({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords})
    return {"name": name, "arguments": arguments}


def op_hello() -> dict:
    from importlib.metadata import version
    return {"bfcl_eval": version("bfcl-eval"), "python": sys.version.split()[0], "model": REGISTERED_MODEL}


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------

class _Channel:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    def send(self, message: dict) -> None:
        self.writer.write(json.dumps(message) + "\n")
        self.writer.flush()

    def receive(self) -> dict | None:
        line = self.reader.readline()
        return json.loads(line) if line else None

    def exchange(self, message: dict) -> dict:
        self.send(message)
        reply = self.receive()
        if reply is None:
            raise RuntimeError("parent closed the channel")
        return reply


OPS = {"hello": op_hello, "load": op_load, "score": op_score, "multi_turn": op_multi_turn,
       "ground_truth_calls": op_ground_truth_calls}


def serve() -> None:
    # BFCL prints progress to stdout: keep the real stdout for the protocol, send the rest to stderr.
    protocol_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    channel = _Channel(sys.stdin, protocol_out)
    _import_bfcl()
    channel.send({"ok": True, "result": "ready"})
    while True:
        request = channel.receive()
        if request is None or request.get("op") == "exit":
            return
        op = OPS.get(request.pop("op", None))
        try:
            if op is None:
                raise ValueError(f"unknown op; known: {sorted(OPS)}")
            if op in (op_multi_turn, op_score):
                request["channel"] = channel
            channel.send({"ok": True, "result": op(**request)})
        except Exception as exc:
            traceback.print_exc()
            channel.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def self_check() -> None:
    """Import everything the checkers and multi-turn backends need, and score one entry."""
    _import_bfcl()
    import importlib

    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING
    for class_name, module in CLASS_FILE_PATH_MAPPING.items():
        if class_name != "MemoryAPI_vector":  # needs sentence-transformers + faiss, left out on purpose
            importlib.import_module(module)
    entry = _entries("simple_python", for_generation=False)[0]
    name, params = next(iter(entry["ground_truth"][0].items()))
    arguments = {key: values[0] for key, values in params.items() if values and values[0] != ""}
    text = "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"
    verdict = op_score("simple_python", [{"id": entry["id"], "result": text}])[0]
    if not verdict["valid"]:
        raise SystemExit(f"self-check: the ground-truth answer failed BFCL's checker: {verdict}")
    print("bfcl self-check ok", op_hello())


if __name__ == "__main__":
    if "--self-check" in sys.argv:
        self_check()
    else:
        serve()
