"""make setup hands pip's settings on to uv (scripts/uv_install.py): the same wheels, indexes and caps."""
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from uv_install import uv_flags  # noqa: E402


def test_uv_gets_pips_settings_with_the_environment_winning_and_missing_local_indexes_left_out(tmp_path):
    listed = (":env:.find-links='/from/env'\n"           # PIP_FIND_LINKS, listed first by pip, wins over the file
              "global.cert='/etc/ssl/cert.pem'\n"         # not an install source: not passed
              "global.constraint='/etc/xdg/pip/constraints.txt'\n"
              f"global.extra-index-url='file:///no/such/simple file://{tmp_path} https://example.org/simple'\n"
              "global.find-links='/from/file'\n")
    assert uv_flags(listed) == ["--constraint", "/etc/xdg/pip/constraints.txt",
                                "--extra-index-url", f"file://{tmp_path}", "--extra-index-url", "https://example.org/simple",
                                "--find-links", "/from/env"]
    assert uv_flags("") == []
