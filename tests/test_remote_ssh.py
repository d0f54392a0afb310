"""NNI's remote training service, for real: a two-trial multi-trial search whose trials NNI starts over SSH.

The test starts its own OpenSSH server on 127.0.0.1 only, on a free (non-default) port, with host and client
keys it generates, its own sshd_config and a remote home in a temporary folder, and stops it at the end. The
search's "remote" machine is that server; nothing leaves the loopback. Skipped when sshd is not installed
(Debian: apt-get install openssh-server; .ci/run installs it).
"""

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nas_restore import run_records
from nas_restore.search import run_search
from tests.test_multitrial import tiny_config

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
KEYGEN = shutil.which("ssh-keygen")
pytestmark = pytest.mark.skipif(not (os.path.isfile(SSHD) and KEYGEN),
                                reason="OpenSSH's sshd and ssh-keygen are not installed (Debian: apt-get install "
                                       "openssh-server; .ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def ssh_server(tmp_path):
    """sshd on 127.0.0.1:PORT for the current user, key login only, started and stopped here."""
    folder = tmp_path / "sshd"
    folder.mkdir()
    for name in ("host_ed25519", "client_ed25519"):
        subprocess.run([KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    shutil.copy(folder / "client_ed25519.pub", folder / "authorized_keys")
    privsep = Path("/run/sshd")  # sshd refuses to start without its privilege-separation folder
    if not privsep.is_dir():
        if os.geteuid() != 0:
            pytest.skip("sshd needs /run/sshd, which only root can create here")
        privsep.mkdir(mode=0o755, parents=True)
    user, port, home = getpass.getuser(), _free_port(), tmp_path / "remote_home"
    home.mkdir()
    # the "remote" side: its home (NNI's trial keeper, uploads and trial folders go there), pip without an
    # index (NNI's worker runs `pip install nni --upgrade` on every machine it starts), matplotlib's font cache
    remote_env = [f"HOME={home}", "PIP_NO_INDEX=1", "PIP_DISABLE_PIP_VERSION_CHECK=1"]
    mpl = Path(os.environ.get("MPLCONFIGDIR") or Path.home() / ".cache" / "matplotlib")
    if mpl.is_dir():
        remote_env.append(f"MPLCONFIGDIR={mpl}")
    config = folder / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {folder / 'host_ed25519'}",
        f"PidFile {folder / 'sshd.pid'}", f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", f"AllowUsers {user}", "StrictModes no", "UsePAM no",
        "Subsystem sftp internal-sftp", f"SetEnv {' '.join(remote_env)}", ""]))
    log = (folder / "sshd.log").open("w")
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while not _listening(port):
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"sshd did not start: {(folder / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield {"port": port, "user": user, "key": folder / "client_ed25519", "home": home,
               "log": folder / "sshd.log"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_a_two_trial_search_runs_its_trials_through_nnis_remote_service_over_ssh(ssh_server, tmp_path, monkeypatch):
    work = tmp_path / "work"  # NNI uploads the folder the search starts from to every machine: keep it small
    work.mkdir()
    monkeypatch.chdir(work)
    service = {"platform": "remote", "nni_manager_ip": "127.0.0.1",
               "machine_list": [{"host": "127.0.0.1", "port": ssh_server["port"], "user": ssh_server["user"],
                                 "ssh_key_file": str(ssh_server["key"]), "python_path": str(Path(sys.executable).parent)}]}
    result = run_search(tiny_config("random", max_trials=2, parallel=2, training_service=service), work / "run")
    meta = result.genotype.metadata
    assert meta["engine"] == "training_service" and meta["trials_run"] == 2 and meta["trials_failed"] == 0
    rows = [json.loads(p.read_text()) for p in (work / "run" / "trials").glob("*.json")]
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    # each trial ran under NNI's trial keeper on the SSH machine: its folder is in the remote home
    environments = list((ssh_server["home"] / "nni-experiments").glob("*/environments/remote-worker*"))
    assert len(environments) == 1, environments
    assert {r["nni_trial"] for r in rows} == {p.name for p in (environments[0] / "trials").iterdir()}
    assert (environments[0] / "upload").is_dir()  # the launch folder, uploaded by NNI
    assert f"Accepted publickey for {ssh_server['user']} from 127.0.0.1" in ssh_server["log"].read_text()
    assert (work / "run" / "nni" / "bind_localhost.js").is_file()  # a loopback manager IP: the portal on 127.0.0.1
    # and all of it is gone: the trial keeper and the manager stopped, no pid file
    assert not (work / "run" / run_records.PROCESSES).exists()
    left = []
    for process in psutil.process_iter():
        try:
            if str(ssh_server["home"]) in " ".join(process.cmdline()):
                left.append(process)
        except psutil.Error:
            continue
    assert left == [], [p.cmdline() for p in left]
