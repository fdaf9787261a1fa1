"""The push hook, precompiled for the Lua that Dovecot runs it with.

push_notification_lua starts a new Lua state, and loads the hook's file into it, for every mail user
it serves: in LMTP that is every delivery. Parsing the 900-line source was most of what the hook
cost Dovecot (measured with the benchmark's bare stack keeping only the hook, 50 mails/s: about
1.9 ms of Dovecot's CPU per mail of some 2.9 ms the hook added); loading the same code as Lua
bytecode (`luac`) skips the parse. luaL_loadfile takes either form, so Dovecot needs no setting for
it, only the file.

Bytecode is only valid for the Lua version (5.x) it was made by, so the compiler must be the one
of the Lua that Dovecot's push_notification_lua plugin links (Debian 12: liblua5.4, compiler in the
package lua5.4). Without that compiler the source is used, as before: slower, never wrong.
The bytecode keeps its debug information, so an error still names the source line, as
"mail-bridge-push.lua:123:"; it is made from the file's base name, so the same source gives the same
bytes wherever it is installed (the installer compares them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from bridge.errors import ConfigError

HOOK_SOURCE = "mail-bridge-push.lua"
HOOK_BYTECODE = "mail-bridge-push.luac"
PLUGIN = "lib22_push_notification_lua_plugin.so"
DEBIAN_MODULE_DIR = Path("/usr/lib/dovecot/modules")  # Debian's mail_plugin_dir, Dovecot's default there
BYTECODE_SIGNATURE = b"\x1bLua"  # LUA_SIGNATURE, the first bytes of every precompiled chunk

_LINKED_LUA = re.compile(rb"liblua(5\.\d)\.so")


def linked_lua_version(plugin: bytes) -> str | None:
    """The Lua version ("5.4") a Dovecot plugin's shared object links, from its dynamic section's
    library names; None when it names no liblua."""
    found = _LINKED_LUA.search(plugin)
    return found.group(1).decode() if found else None


def lua_compiler(module_dir: Path) -> Path | None:
    """`luac<version>` for the Lua that Dovecot's push_notification_lua plugin in `module_dir`
    (Dovecot's mail_plugin_dir) links, when it is installed; None otherwise."""
    try:
        version = linked_lua_version((module_dir / PLUGIN).read_bytes())
    except OSError:
        return None
    found = shutil.which(f"luac{version}") if version else None
    return Path(found) if found else None


def compile_hook(source: str, compiler: Path) -> bytes:
    """The hook's bytecode, made by `compiler` from `source` under the name HOOK_SOURCE."""
    with tempfile.TemporaryDirectory(prefix="mail-bridge-luac-") as tmp:
        (Path(tmp) / HOOK_SOURCE).write_text(source)
        done = subprocess.run(
            [str(compiler), "-o", HOOK_BYTECODE, HOOK_SOURCE],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise ConfigError(f"{compiler} could not compile the push hook: {done.stderr.strip()}")
        bytecode = (Path(tmp) / HOOK_BYTECODE).read_bytes()
    if not bytecode.startswith(BYTECODE_SIGNATURE):
        raise ConfigError(f"{compiler} made no Lua bytecode of the push hook")
    return bytecode
