"""Dtype names (`multimeditron.dtypes`): one map and one parse for every command and function that takes a dtype
name; an unknown name is one clear error listing the accepted ones, wherever it is given."""
from __future__ import annotations

import pytest
import torch

from multimeditron.dtypes import DTYPES, DtypeError, dtype_name, parse_dtype
from multimeditron.errors import UserError


def test_names_and_aliases_parse_to_one_dtype():
    assert parse_dtype("bf16") is parse_dtype("BFloat16") is torch.bfloat16
    assert parse_dtype("half") is torch.float16 and parse_dtype("fp32") is torch.float32
    assert parse_dtype(torch.float16) is torch.float16
    assert parse_dtype("auto", allow_auto=True) == "auto"
    assert dtype_name("bf16") == dtype_name(torch.bfloat16) == "bfloat16"
    assert {dtype_name(name) for name in DTYPES} == {"float32", "bfloat16", "float16"}


def test_unknown_name_is_one_error_naming_the_valid_ones():
    with pytest.raises(DtypeError, match=r"unknown dtype 'float8'; valid: float32, bfloat16, float16, fp32") as caught:
        parse_dtype("float8")
    assert isinstance(caught.value, UserError) and "auto" not in str(caught.value)
    with pytest.raises(DtypeError, match=r"valid: auto, float32"):
        parse_dtype("float8", allow_auto=True)
    with pytest.raises(DtypeError, match="'auto'"):  # only where a saved dtype exists
        parse_dtype("auto")


def test_embedding_and_the_probe_command_take_the_same_names(tmp_path, capsys):
    from multimeditron.cli import main
    from multimeditron.probing.embed import embed
    from multimeditron.probing.specs import build_probe_expert, parse_spec

    expert = build_probe_expert(parse_spec("retfound_green", tiny=True))
    with pytest.raises(DtypeError, match="unknown dtype 'float8'; valid: float32"):
        embed(expert, [], dtype="float8")
    assert main(["probe", "--expert", "retfound_green", "--tiny", "--data", str(tmp_path), "--dtype", "float8"]) == 2
    error = capsys.readouterr().err  # refused by the recipe's validation, before any data is read
    assert error.startswith("error: embedding: unknown dtype 'float8'; valid: ") and all(n in error for n in DTYPES)
