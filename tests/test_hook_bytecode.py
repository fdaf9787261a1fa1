"""bridge.hook_bytecode: the push hook precompiled by the compiler of the Lua Dovecot links."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.hook_bytecode import BYTECODE_SIGNATURE, DEBIAN_MODULE_DIR, compile_hook, linked_lua_version, lua_compiler
from tests.common import REPO


def test_the_lua_a_plugin_links_is_read_from_its_library_names() -> None:
    assert linked_lua_version(b"\x7fELF...libdovecot.so.0\0liblua5.4.so.0\0libc.so.6\0") == "5.4"
    assert linked_lua_version(b"\x7fELF...liblua5.3.so.0\0") == "5.3"
    assert linked_lua_version(b"\x7fELF...libc.so.6\0") is None


def test_without_the_plugin_or_its_compiler_there_is_no_compiler(tmp_path: Path) -> None:
    assert lua_compiler(tmp_path) is None  # no push_notification_lua plugin here
    (tmp_path / "lib22_push_notification_lua_plugin.so").write_bytes(b"liblua5.9.so.0")
    assert lua_compiler(tmp_path) is None  # no luac5.9 on this machine


def test_debians_dovecot_gets_the_compiler_of_its_own_lua() -> None:
    compiler = lua_compiler(DEBIAN_MODULE_DIR)
    assert compiler is not None and compiler.name == "luac5.4"  # `make setup` installs lua5.4


def test_the_hook_compiles_to_the_same_bytes_that_lua_loads_and_errors_name_the_source_line(tmp_path: Path) -> None:
    compiler = lua_compiler(DEBIAN_MODULE_DIR)
    assert compiler is not None
    source = (REPO / "hooks" / "mail-bridge-push.lua").read_text()
    bytecode = compile_hook(source, compiler)
    assert bytecode.startswith(BYTECODE_SIGNATURE) and bytecode == compile_hook(source, compiler)
    lua = shutil.which(compiler.name.replace("luac", "lua"))
    assert lua is not None
    failing = compile_hook("local x = nil\nreturn x.field\n", compiler)
    (tmp_path / "failing.luac").write_bytes(failing)
    ran = subprocess.run([lua, str(tmp_path / "failing.luac")], capture_output=True, text=True, check=False)
    assert ran.returncode != 0 and "mail-bridge-push.lua:2:" in ran.stderr


def test_source_that_does_not_compile_is_refused_with_the_compilers_reason() -> None:
    compiler = lua_compiler(DEBIAN_MODULE_DIR)
    assert compiler is not None
    with pytest.raises(ConfigError, match=r"could not compile the push hook: .*mail-bridge-push\.lua:1:"):
        compile_hook("local = 1\n", compiler)
