"""A small in-memory file system: the stateful environment of the built-in multi-turn tasks.

State (JSON): ``{"cwd": "/docs", "root": {"docs": {"a.txt": "hello"}}}`` where a dict is a folder
and a string is a file's content. Tools work on names inside the current folder, like BFCL's
``GorillaFileSystem``: ``pwd ls cd mkdir touch write_file cat mv rm``.
"""

from __future__ import annotations

import copy

from .base import ToolEnv, ToolError

MAX_NAME_CHARS = 64
DEFAULT_STATE = {"cwd": "/", "root": {"documents": {"notes.txt": "Buy milk."}, "photos": {}}}


def _doc(name: str, description: str, params: dict, required: list[str]) -> dict:
    properties = {p: {"type": "string", "description": d} if d else {"type": "string"} for p, d in params.items()}
    return {"name": name, "description": description,
            "parameters": {"type": "dict", "properties": properties, "required": required}}


class FileSystemEnv(ToolEnv):
    name = "filesystem"
    TOOL_DOCS = [
        _doc("ls", "List the current folder.", {}, []),
        _doc("cd", "Go to a subfolder, '..' (parent) or '/' (top).", {"folder": ""}, ["folder"]),
        _doc("mkdir", "Create a folder here.", {"dir_name": ""}, ["dir_name"]),
        _doc("touch", "Create an empty file here.", {"file_name": ""}, ["file_name"]),
        _doc("write_file", "Create or replace a file here.", {"file_name": "", "content": ""},
             ["file_name", "content"]),
        _doc("cat", "Show a file.", {"file_name": ""}, ["file_name"]),
        _doc("mv", "Move into a subfolder or '..', else rename.", {"source": "", "destination": ""},
             ["source", "destination"]),
        _doc("rm", "Delete a file or empty folder here.", {"name": ""}, ["name"]),
        _doc("pwd", "Show the current folder.", {}, []),
    ]

    def __init__(self, state: dict | None = None):
        state = copy.deepcopy(DEFAULT_STATE if state is None else state)
        if not isinstance(state, dict) or not isinstance(state.get("root"), dict):
            raise ValueError(f"filesystem state must be a dict with a 'root' folder dict, got {state!r}")
        _check_tree(state["root"], "/")
        self._root = state["root"]
        self._cwd = _split_path(state.get("cwd", "/"))
        if not isinstance(self._folder(self._cwd), dict):
            raise ValueError(f"filesystem state: cwd {state.get('cwd')!r} is not a folder of the tree")

    def state(self) -> dict:
        return {"cwd": self._cwd_text(), "root": copy.deepcopy(self._root)}

    def outcome_state(self) -> dict:
        return {"root": copy.deepcopy(self._root)}  # where the user ends up does not matter

    # -- tools --------------------------------------------------------------------------------

    def tool_pwd(self) -> str:
        return self._cwd_text()

    def tool_ls(self) -> str:
        here = self._here()
        names = [f"{n}/" if isinstance(v, dict) else n for n, v in sorted(here.items())]
        return " ".join(names) if names else "(empty folder)"

    def tool_cd(self, folder: str) -> str:
        if folder == "/":
            self._cwd = []
        elif folder == "..":
            if not self._cwd:
                raise ToolError("already at the top folder")
            self._cwd = self._cwd[:-1]
        else:
            _check_name(folder)
            if not isinstance(self._here().get(folder), dict):
                raise ToolError(f"no folder named {folder!r} in {self._cwd_text()}")
            self._cwd = [*self._cwd, folder]
        return f"Now in {self._cwd_text()}"

    def tool_mkdir(self, dir_name: str) -> str:
        self._create(dir_name, {})
        return f"Created folder {dir_name}"

    def tool_touch(self, file_name: str) -> str:
        _check_name(file_name)
        existing = self._here().get(file_name)
        if isinstance(existing, dict):
            raise ToolError(f"{file_name!r} is a folder")
        if existing is None:
            self._here()[file_name] = ""
        return f"Touched {file_name}"

    def tool_write_file(self, file_name: str, content: str) -> str:
        _check_name(file_name)
        if isinstance(self._here().get(file_name), dict):
            raise ToolError(f"{file_name!r} is a folder")
        self._here()[file_name] = content
        return f"Wrote {len(content)} characters to {file_name}"

    def tool_cat(self, file_name: str) -> str:
        return self._file(file_name)

    def tool_mv(self, source: str, destination: str) -> str:
        _check_name(source)
        here = self._here()
        if source not in here:
            raise ToolError(f"no file or folder named {source!r} in {self._cwd_text()}")
        target = self._move_target(source, destination)
        if target is None:  # a rename
            _check_name(destination)
            if destination in here:
                raise ToolError(f"{destination!r} already exists")
            here[destination] = here.pop(source)
            return f"Renamed {source} to {destination}"
        if source in target:
            raise ToolError(f"{destination!r} already holds an item named {source!r}")
        target[source] = here.pop(source)
        return f"Moved {source} into {destination}"

    def tool_rm(self, name: str) -> str:
        _check_name(name)
        here = self._here()
        if name not in here:
            raise ToolError(f"no file or folder named {name!r} in {self._cwd_text()}")
        if isinstance(here[name], dict) and here[name]:
            raise ToolError(f"folder {name!r} is not empty")
        del here[name]
        return f"Deleted {name}"

    # -- helpers --------------------------------------------------------------------------------

    def _here(self) -> dict:
        return self._folder(self._cwd)

    def _folder(self, parts: list[str]):
        node = self._root
        for part in parts:
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def _cwd_text(self) -> str:
        return "/" + "/".join(self._cwd)

    def _create(self, name: str, value) -> None:
        _check_name(name)
        if name in self._here():
            raise ToolError(f"{name!r} already exists in {self._cwd_text()}")
        self._here()[name] = value

    def _file(self, name: str) -> str:
        _check_name(name)
        value = self._here().get(name)
        if value is None:
            raise ToolError(f"no file named {name!r} in {self._cwd_text()}")
        if isinstance(value, dict):
            raise ToolError(f"{name!r} is a folder")
        return value

    def _move_target(self, source: str, destination: str) -> dict | None:
        if destination == "..":
            if not self._cwd:
                raise ToolError("already at the top folder")
            return self._folder(self._cwd[:-1])
        here = self._here()
        if destination != source and isinstance(here.get(destination), dict):
            return here[destination]
        return None


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\x00" in name or len(name) > MAX_NAME_CHARS:
        raise ToolError(f"invalid name {name!r}: use a plain name of at most {MAX_NAME_CHARS} characters without '/'")


def _split_path(path) -> list[str]:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"filesystem state: cwd must be an absolute path string, got {path!r}")
    return [part for part in path.split("/") if part]


def _check_tree(node: dict, where: str) -> None:
    for name, value in node.items():
        try:
            _check_name(name)
        except ToolError as exc:
            raise ValueError(f"filesystem state at {where}: {exc}") from None
        if isinstance(value, dict):
            _check_tree(value, f"{where}{name}/")
        elif not isinstance(value, str):
            raise ValueError(f"filesystem state at {where}{name}: a file's content must be a string, "
                             f"got {type(value).__name__}")
