#!/usr/bin/env python3
"""Fleet benchmark: the project's rolling deploy beside Ansible's canonical rolling playbook.

One world on loopback, in a temporary directory, every process started here and stopped here by
its pid (TERM, then KILL):

- one sshd (its own host key, a fresh ed25519 client key, known_hosts for the deploying side);
- N "hosts": N release directories <world>/hosts/app<i>/ (releases/<version>, `current`), each
  reached through that sshd over its own SSH connection (as N machines would be);
- one nginx (master + 1 worker) with N server blocks on N ports; host i serves
  <world>/hosts/app<i>/current/health.json as /health, and answers 503 while the current release
  holds broken/app<i> (so a broken release is broken on that one host only);
- one HAProxy (master-worker, admin stats socket in the world) with backend `app` of N servers.

Then, for each N, probe interval and repetition, alternately: `deploy run` (the release binary,
a generated rolling plan, batch B, HTTP probe on /health with its version) and, when
`ansible-playbook` is found, Ansible's canonical rolling playbook (serial B, haproxy drain,
unarchive, `current` link, restart, uri until the version, haproxy enable). The world is put
back on 1.0.0 before each run (files and HAProxy), so each run does the full work, and each
run's end state is checked (every `current` on 2.0.0, every server back at full weight and
ready, the frontend serving 2.0.0 only). Prints Markdown tables.

Standard library only (Python 3.9+).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

OLD, NEW = "1.0.0", "2.0.0"
BACKEND = "app"
FULL_WEIGHT = 100

# Runs the tool given as argv[2:], then writes {"wall_s", "maxrss_kib", "cpu_s", "rc",
# "start_epoch"} to argv[1]: the wall time from spawn to exit, the largest RSS of any process of
# the tool's tree and the CPU time (user + system) of the whole tree (RUSAGE_CHILDREN of this
# fresh process: its child and every descendant waited for). The servers standing in for the
# hosts (sshd's sessions, nginx, HAProxy) are not the tool's: their CPU is not counted.
RSS_WRAPPER = r"""
import json, resource, subprocess, sys, time
t, epoch = time.monotonic(), time.time()
p = subprocess.Popen(sys.argv[2:])
while True:
    try:
        rc = p.wait()
        break
    except KeyboardInterrupt:
        pass  # Ctrl-C reached the tool too: let it stop (a deploy rolls back) and wait for it.
wall = time.monotonic() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": wall, "maxrss_kib": ru.ru_maxrss, "cpu_s": ru.ru_utime + ru.ru_stime,
               "rc": rc, "start_epoch": epoch}, f)
sys.exit(rc)
"""


def log(msg: str) -> None:
    print(f"[bench-fleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def wait_for(what: str, check, limit: float = 15.0, proc: subprocess.Popen | None = None,
             logfile: Path | None = None) -> None:
    deadline = time.monotonic() + limit
    while True:
        if proc is not None and proc.poll() is not None:
            tail = logfile.read_text(errors="replace")[-2000:] if logfile and logfile.exists() else ""
            raise RuntimeError(f"{what}: exited with {proc.returncode}: {tail}")
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready within {limit} s")
        time.sleep(0.05)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Processes:
    """Every server this script started, stopped by pid in reverse order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], logfile: Path, **kw) -> subprocess.Popen:
        out = open(logfile, "ab")
        # A session of its own: Ctrl-C on the terminal reaches this script and the tool under
        # test (a deploy then rolls back), not the servers it needs to do so.
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True, **kw)
        out.close()
        self.procs.append((name, p))
        return p

    def stop_all(self) -> None:
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {p.pid}) ignored TERM; KILL")
                p.kill()
                p.wait()
        self.procs.clear()


class World:
    def __init__(self, root: Path, n: int, procs: Processes, haproxy_check_ms: int) -> None:
        self.root = root
        self.n = n
        self.procs = procs
        self.haproxy_check_ms = haproxy_check_ms
        self.hosts = root / "hosts"
        self.artifacts = root / "artifacts"
        self.ssh_dir = root / "ssh"
        self.socket = root / "haproxy" / "admin.sock"
        self.names = [f"app{i}" for i in range(1, n + 1)]

    # -- artifacts -------------------------------------------------------------------------
    def make_artifact(self, version: str, broken: list[str] = ()) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        suffix = "-broken-" + "-".join(broken) if broken else ""
        path = self.artifacts / f"app-{version}{suffix}.tar.gz"
        files = {"health.json": json.dumps({"status": "ok", "version": version}).encode(),
                 "VERSION": f"{version}\n".encode(),
                 "index.html": f"<p>app {version}</p>\n".encode()}
        for name in broken:
            files[f"broken/{name}"] = b"this release is broken on this host\n"
        with tarfile.open(path, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = int(time.time())
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
        return path

    # -- sshd ------------------------------------------------------------------------------
    def start_sshd(self) -> None:
        d = self.ssh_dir
        d.mkdir(parents=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        for key in ("host_ed25519", "client_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                           check=True, stdin=subprocess.DEVNULL)
        shutil.copy(d / "client_ed25519.pub", d / "authorized_keys")
        (self.ssh_port,) = free_ports(1)
        # MaxStartups: up to N connections arrive at once (one per target); MaxSessions: channels
        # per connection. SHLVL=1: bash (root's login shell) then skips ~/.bashrc, whose start-up
        # (a pyenv init on this machine) belongs to this machine, not to the hosts under test.
        config = (f"Port {self.ssh_port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n"
                  f"PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n"
                  "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
                  "PubkeyAuthentication yes\nPasswordAuthentication no\n"
                  "KbdInteractiveAuthentication no\nMaxSessions 64\nSetEnv SHLVL=1\n"
                  "MaxStartups 1024:30:2048\nLogLevel ERROR\n"
                  # As in Debian's default config; Ansible copies files over sftp.
                  "Subsystem sftp internal-sftp\n")
        (d / "sshd_config").write_text(config)
        logfile = d / "sshd.log"
        p = self.procs.start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                             logfile)

        def banner() -> bool:
            with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=2) as s:
                return s.recv(8).startswith(b"SSH-2.0")

        wait_for("sshd", banner, proc=p, logfile=logfile)
        host_key = " ".join((d / "host_ed25519.pub").read_text().split()[:2])
        self.known_hosts = d / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.ssh_port} {host_key}\n")
        self.client_key = d / "client_ed25519"
        self.user = os.environ.get("USER") or "root"

    # -- nginx -----------------------------------------------------------------------------
    def start_nginx(self) -> None:
        d = self.root / "nginx"
        (d / "tmp").mkdir(parents=True)
        (d / "logs").mkdir()
        self.app_ports = free_ports(self.n)
        servers = []
        for name, port in zip(self.names, self.app_ports):
            cur = self.hosts / name / "current"
            servers.append(
                f"    server {{\n        listen 127.0.0.1:{port};\n        root {cur};\n"
                f"        location = /health {{\n"
                f"            if (-f {cur}/broken/{name}) {{ return 503; }}\n"
                f"            default_type application/json;\n"
                f"            try_files /health.json =404;\n        }}\n    }}\n")
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = (f"{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
                f"worker_rlimit_nofile 8192;\nevents {{ worker_connections 4096; }}\n"
                f"http {{\n    access_log off;\n    open_file_cache off;\n"
                f"    client_body_temp_path {d}/tmp/client;\n    proxy_temp_path {d}/tmp/proxy;\n"
                f"    fastcgi_temp_path {d}/tmp/fastcgi;\n    uwsgi_temp_path {d}/tmp/uwsgi;\n"
                f"    scgi_temp_path {d}/tmp/scgi;\n" + "".join(servers) + "}\n")
        (d / "nginx.conf").write_text(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        logfile = d / "nginx.out"
        p = self.procs.start("nginx", [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c",
                                       str(d / "nginx.conf"), "-g", "daemon off;"], logfile)
        last = self.app_ports[-1]
        wait_for("nginx", lambda: http_get(f"http://127.0.0.1:{last}/health", 1)[0] == 200,
                 proc=p, logfile=d / "error.log")

    # -- haproxy ---------------------------------------------------------------------------
    def start_haproxy(self) -> None:
        d = self.root / "haproxy"
        d.mkdir()
        self.frontend_port, = free_ports(1)
        check = f" check inter {self.haproxy_check_ms}ms" if self.haproxy_check_ms else ""
        lines = [
            "global",
            f"    stats socket {self.socket} mode 600 level admin",
            "    stats timeout 30s",
            "    maxconn 8192",
            "    hard-stop-after 5s",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 30s",
            "    timeout server 30s",
            "frontend fe",
            f"    bind 127.0.0.1:{self.frontend_port}",
            f"    default_backend {BACKEND}",
            f"backend {BACKEND}",
            "    balance roundrobin",
        ]
        if check:
            lines.append("    option httpchk GET /health")
        for name, port in zip(self.names, self.app_ports):
            lines.append(f"    server {name} 127.0.0.1:{port} weight {FULL_WEIGHT}{check}")
        (d / "haproxy.cfg").write_text("\n".join(lines) + "\n")
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        logfile = d / "haproxy.log"
        p = self.procs.start("haproxy", [haproxy, "-W", "-S", str(d / "master.sock"), "-f",
                                         str(d / "haproxy.cfg")], logfile)
        wait_for("haproxy", lambda: "Name" in self.admin("show info"), proc=p, logfile=logfile)

    def admin(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks).decode()

    def server_stats(self) -> dict[str, dict[str, str]]:
        text = self.admin("show stat")
        lines = [line for line in text.splitlines() if line.strip()]
        header = lines[0].lstrip("# ").split(",")
        rows = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND"):
                rows[row["svname"]] = row
        return rows

    # -- hosts and reset -------------------------------------------------------------------
    def reset(self, old_artifact: Path) -> None:
        """Every host on OLD only, every server ready at full weight."""
        self.reset_files(old_artifact)
        self.reset_haproxy()

    def reset_files(self, old_artifact: Path) -> None:
        for name in self.names:
            root = self.hosts / name
            releases = root / "releases"
            old = releases / OLD
            if not (old / ".deploy-complete").exists():
                old.mkdir(parents=True, exist_ok=True)
                with tarfile.open(old_artifact) as tar:
                    tar.extractall(old)
                (old / ".deploy-complete").write_text("")
            for entry in releases.iterdir():
                if entry.name not in (OLD, ".history"):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() \
                        else entry.unlink()
            (releases / ".history").write_text(f"prepared {OLD}\nactivated {OLD}\n")
            tmp = root / "current.tmp-bench"
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            tmp.symlink_to(Path("releases") / OLD)
            os.replace(tmp, root / "current")
            for stray in root.glob("current.tmp-*"):
                stray.unlink()

    def reset_haproxy(self) -> None:
        cmds = []
        for name in self.names:
            cmds.append(f"set server {BACKEND}/{name} state ready")
            cmds.append(f"set server {BACKEND}/{name} weight {FULL_WEIGHT}")
        # One command per connection keeps it simple and independent of HAProxy's prompt mode.
        for c in cmds:
            out = self.admin(c).strip()
            if out:
                raise RuntimeError(f"HAProxy answered {out!r} to {c!r}")

    def check(self, version: str) -> list[str]:
        """What differs from: every host on `version`, every server ready at full weight, the
        frontend serving `version` only. Empty when all is as it should be."""
        problems = []
        for name in self.names:
            link = os.readlink(self.hosts / name / "current")
            if Path(link).name != version:
                problems.append(f"{name}: current -> {link}")
        for name, row in sorted(self.server_stats().items()):
            if row["weight"] != str(FULL_WEIGHT) or not row["status"].startswith(("UP", "no check")):
                problems.append(f"{name}: weight {row['weight']} status {row['status']}")
        seen = {}
        for _ in range(min(self.n, 64) * 2):
            status, body = http_get(f"http://127.0.0.1:{self.frontend_port}/health")
            key = f"{status} {body.decode(errors='replace').strip()}"
            seen[key] = seen.get(key, 0) + 1
        expected = f'200 {{"status": "ok", "version": "{version}"}}'
        for key, count in seen.items():
            if key != expected:
                problems.append(f"frontend: {count} × {key}")
        return problems

    def setup(self) -> None:
        self.old_artifact = self.make_artifact(OLD)
        self.new_artifact = self.make_artifact(NEW)
        for name in self.names:
            (self.hosts / name / "releases").mkdir(parents=True)
        self.reset_files(self.old_artifact)
        self.start_sshd()
        self.start_nginx()
        self.start_haproxy()


# -- the project's deploy ---------------------------------------------------------------------

def toml_str(s) -> str:
    return json.dumps(str(s))


def write_plan(world: World, path: Path, state_dir: Path, batch: int, interval: float,
               parallelism: int, deadline: str, prepare: str = "all_first") -> None:
    ms = max(1, round(interval * 1000))
    out = [
        "# Generated by scripts/bench_fleet.py.",
        "[environment]",
        f'name = "bench-fleet-{world.n}"',
        f"state_dir = {toml_str(state_dir)}",
        "",
        "[release]",
        f'version = "{NEW}"',
        "",
        "[strategy]",
        'kind = "rolling"',
        f"batch = {{ count = {batch} }}",
        f'prepare = "{prepare}"',
        "",
        "[policies]",
        f"parallelism = {parallelism}",
        "",
        "[policies.probe]",
        f'interval = "{ms}ms"',
        f'deadline = "{deadline}"',
        "",
        "[policies.drain]",
        'timeout = "30s"',
        f'poll_interval = "{ms}ms"',
        "",
        "[probe]",
        'path = "/health"',
        'expect_fields = { status = "ok" }',
        'version_field = "version"',
        "",
        "[switch]",
        'kind = "haproxy"',
        f"socket = {toml_str(world.socket)}",
        f'backend = "{BACKEND}"',
    ]
    if world.haproxy_check_ms:
        out.append(f'check_interval = "{world.haproxy_check_ms}ms"')
    out.append("")
    ssh = (f"ssh = {{ host = \"127.0.0.1\", port = {world.ssh_port}, user = {toml_str(world.user)}, "
           f"key_file = {toml_str(world.client_key)}, known_hosts = {toml_str(world.known_hosts)}, "
           'host_key_policy = "strict" }')
    for name, port in zip(world.names, world.app_ports):
        out += ["[[targets]]", f'id = "{name}"', f"root = {toml_str(world.hosts / name)}",
                f'endpoint = "http://127.0.0.1:{port}"', 'restart = ["true"]', "keep = 3", ssh, ""]
    path.write_text("\n".join(out))


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def run_measured(argv: list[str], out_dir: Path, tag: str, env=None) -> dict:
    """Run argv under the rusage wrapper; its output goes to <out_dir>/<tag>.log. Also how
    busy the whole machine was meanwhile (every process: the tool, sshd, the shells, HAProxy)."""
    result = out_dir / f"{tag}.rusage.json"
    busy0, total0 = machine_cpu()
    logfile = out_dir / f"{tag}.log"
    with open(logfile, "wb") as lf:
        p = subprocess.Popen([sys.executable, "-c", RSS_WRAPPER, str(result), *argv],
                             stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT, env=env)
        try:
            p.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the tool as well: give it time to stop on its own (a deploy rolls
            # back) before the servers are stopped under it.
            log(f"interrupted; waiting up to 60 s for {argv[0]} to stop (log {logfile})")
            try:
                p.wait(timeout=60)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                p.kill()
                p.wait()
            raise
    busy1, total1 = machine_cpu()
    r = json.loads(result.read_text())
    r["log"] = str(logfile)
    r["machine_busy"] = (busy1 - busy0) / max(1, total1 - total0)
    return r


def parse_time(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def step_end(rec: dict) -> float:
    return parse_time(rec["started_at"]) + rec["duration_ms"] / 1000


def summarize_report(report: dict) -> dict:
    """Where the time went: per op, the span from the first start to the last end, and the
    summed step time."""
    ops: dict[str, dict] = {}
    for rec in report.get("steps", []):
        op = rec["step"]["op"]
        s, e = parse_time(rec["started_at"]), step_end(rec)
        o = ops.setdefault(op, {"count": 0, "sum_s": 0.0, "first": s, "last": e})
        o["count"] += 1
        o["sum_s"] += rec["duration_ms"] / 1000
        o["first"], o["last"] = min(o["first"], s), max(o["last"], e)
    start = parse_time(report["started_at"])
    return {op: {"count": o["count"], "sum_s": round(o["sum_s"], 3),
                 "from_s": round(o["first"] - start, 3), "to_s": round(o["last"] - start, 3)}
            for op, o in ops.items()}


def run_deploy(world: World, deploy_bin: Path, out_dir: Path, tag: str, batch: int,
               interval: float, parallelism: int, artifact: Path, deadline: str,
               prepare: str = "all_first") -> dict:
    state_dir = out_dir / f"{tag}.state"
    plan = out_dir / f"{tag}.plan.toml"
    report = out_dir / f"{tag}.report.json"
    write_plan(world, plan, state_dir, batch, interval, parallelism, deadline, prepare)
    env = dict(os.environ, NO_COLOR="1")
    r = run_measured([str(deploy_bin), "run", str(plan), "--release", NEW, "--artifact",
                      str(artifact), "--report", str(report)], out_dir, tag, env)
    r["report"] = json.loads(report.read_text()) if report.exists() else None
    if r["report"]:
        # Time spent outside the run the report covers: before it (start-up, plan file, SSH
        # connections, reading the live state, the lock) and after it (reports, exit).
        start = parse_time(r["report"]["started_at"])
        r["before_run_s"] = start - r["start_epoch"]
        r["after_run_s"] = r["start_epoch"] + r["wall_s"] - parse_time(r["report"]["finished_at"])
    return r


# -- Ansible ------------------------------------------------------------------------------------

PLAYBOOK = """\
# Ansible's canonical rolling update (as in ansible/ansible-examples lamp_haproxy
# rolling_update.yml): take a batch out of the load balancer, deploy, restart, wait until it
# is healthy, put it back. Generated by scripts/bench_fleet.py.
- hosts: app
  serial: {batch}
  gather_facts: false
  any_errors_fatal: true
  tasks:
    - name: Drain and disable the host in HAProxy
      community.general.haproxy:
        state: disabled
        drain: true
        wait: true
        wait_interval: {wait_interval}
        host: "{{{{ inventory_hostname }}}}"
        backend: {backend}
        socket: {socket}
      delegate_to: localhost

    - name: Release directory
      ansible.builtin.file:
        path: "{{{{ app_root }}}}/releases/{{{{ release }}}}"
        state: directory
        mode: "0755"

    - name: Unpack the release
      ansible.builtin.unarchive:
        src: "{{{{ artifact }}}}"
        dest: "{{{{ app_root }}}}/releases/{{{{ release }}}}"

    - name: Point current at the release
      ansible.builtin.file:
        src: "{{{{ app_root }}}}/releases/{{{{ release }}}}"
        dest: "{{{{ app_root }}}}/current"
        state: link
        force: true

    - name: Restart
      ansible.builtin.command: "true"
      changed_when: true

    - name: Wait until healthy on the release
      ansible.builtin.uri:
        url: "http://127.0.0.1:{{{{ app_port }}}}/health"
        return_content: true
      register: health
      until: health.status == 200 and health.json.status == "ok" and health.json.version == release
      retries: {retries}
      delay: {delay}
      delegate_to: localhost

    - name: Enable the host in HAProxy
      community.general.haproxy:
        state: enabled
        wait: {wait_up}
        wait_interval: {wait_interval}
        host: "{{{{ inventory_hostname }}}}"
        backend: {backend}
        socket: {socket}
      delegate_to: localhost
"""


def find_ansible() -> str | None:
    explicit = os.environ.get("ANSIBLE_PLAYBOOK")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("ansible-playbook")


def write_ansible(world: World, out_dir: Path, tag: str, batch: int, interval: float,
                  forks: int, profile: bool) -> tuple[Path, Path, Path]:
    d = out_dir / f"{tag}.ansible"
    d.mkdir()
    inv = ["[app]"]
    cp_dir = d / "cp"
    cp_dir.mkdir()
    for name, port in zip(world.names, world.app_ports):
        # One SSH connection (ControlMaster) per host, as with N machines: without a per-host
        # ControlPath, every host (same address, port and user) would share one master.
        inv.append(f"{name} ansible_host=127.0.0.1 ansible_port={world.ssh_port} "
                   f"ansible_user={world.user} app_root={world.hosts / name} app_port={port} "
                   f"ansible_control_path={cp_dir}/{name}")
    inv += ["", "[app:vars]", f"ansible_ssh_private_key_file={world.client_key}",
            "ansible_python_interpreter=/usr/bin/python3", f"release={NEW}",
            f"artifact={world.new_artifact}"]
    (d / "inventory.ini").write_text("\n".join(inv) + "\n")
    # The haproxy module's wait_interval is whole seconds; its first look is immediate.
    (d / "playbook.yml").write_text(PLAYBOOK.format(
        batch=batch, backend=BACKEND, socket=world.socket, retries=max(60, int(60 / interval)),
        delay=interval if interval < 1 else int(interval), wait_interval=1,
        # The module's wait for UP needs HAProxy's health checks ("no check" otherwise).
        wait_up="true" if world.haproxy_check_ms else "false"))
    cfg = (f"[defaults]\nforks = {forks}\nhost_key_checking = True\nretry_files_enabled = False\n"
           f"interpreter_python = /usr/bin/python3\nlocal_tmp = {d}/tmp\n"
           + ("callbacks_enabled = ansible.posix.profile_tasks\n" if profile else "")
           +
           f"[ssh_connection]\npipelining = True\n"
           f"ssh_args = -o ControlMaster=auto -o ControlPersist=60s "
           f"-o UserKnownHostsFile={world.known_hosts} -o StrictHostKeyChecking=yes\n")
    (d / "ansible.cfg").write_text(cfg)
    return d, d / "inventory.ini", d / "playbook.yml"


def run_ansible(world: World, ansible: str, out_dir: Path, tag: str, batch: int,
                interval: float, forks: int, profile: bool = False) -> dict:
    d, inv, playbook = write_ansible(world, out_dir, tag, batch, interval, forks, profile)
    env = dict(os.environ, ANSIBLE_CONFIG=str(d / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOME=str(d / "home"))
    try:
        return run_measured([ansible, "-i", str(inv), str(playbook)], out_dir, tag, env)
    finally:
        # ControlPersist masters outlive the playbook; stop them (by their control sockets).
        for cp in (d / "cp").iterdir():
            subprocess.run(["ssh", "-o", f"ControlPath={cp}", "-O", "exit", "-p",
                            str(world.ssh_port), "127.0.0.1"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)


# -- the benchmark ------------------------------------------------------------------------------

def fmt_s(x) -> str:
    return "—" if x is None else f"{x:.2f} s"


def fmt_mib(kib) -> str:
    return "—" if kib is None else f"{kib / 1024:.1f} MiB"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def bench_size(args, n: int, deploy_bin: Path, ansible: str | None, rows: list,
               rollbacks: list) -> None:
    procs = Processes()
    world_dir = Path(tempfile.mkdtemp(prefix=f"bench-fleet-n{n}-", dir=args.tmp))
    world = World(world_dir, n, procs, args.haproxy_check_ms)
    log(f"N = {n}: world in {world_dir}")
    try:
        world.setup()
        runs_dir = world_dir / "runs"
        runs_dir.mkdir()
        for interval in args.intervals:
            floor = math.ceil(n / args.batch) * interval
            res = {t: [] for t in args.tools}
            for rep in range(1, args.reps + 1):
                for tool in args.tools:
                    if tool == "ansible" and not ansible:
                        continue
                    world.reset(world.old_artifact)
                    bad = world.check(OLD)
                    if bad:
                        raise RuntimeError(f"the reset left: {bad[:5]}")
                    tag = f"{tool}-n{n}-i{interval}-r{rep}"
                    if tool == "deploy":
                        r = run_deploy(world, deploy_bin, runs_dir, tag, args.batch, interval,
                                       args.parallelism, world.new_artifact, args.probe_deadline,
                                       args.prepare)
                    else:
                        r = run_ansible(world, ansible, runs_dir, tag, args.batch, interval,
                                        args.forks, args.verbose)
                    problems = world.check(NEW)
                    ok = r["rc"] == 0 and not problems
                    log(f"{tag}: rc {r['rc']}, wall {r['wall_s']:.2f} s (floor {floor:.2f} s), "
                        f"peak RSS {r['maxrss_kib'] / 1024:.1f} MiB, CPU {r.get('cpu_s', 0):.2f} s, "
                        f"machine busy {100 * r.get('machine_busy', 0):.0f} %, "
                        + ("full work done" if ok else f"NOT DONE: {problems[:5]} (log {r['log']})"))
                    if tool == "deploy" and r.get("report") and args.verbose:
                        log(f"  steps: {json.dumps(summarize_report(r['report']))}")
                    r["ok"] = ok
                    res[tool].append(r)
            d = res.get("deploy", [])
            a = res.get("ansible", [])
            dw = median([r["wall_s"] for r in d if r["ok"]])
            aw = median([r["wall_s"] for r in a if r["ok"]])
            breakdown = None
            if d and d[-1].get("report"):
                breakdown = summarize_report(d[-1]["report"])
                breakdown["before the run"] = {"count": 1, "sum_s": round(d[-1]["before_run_s"], 3),
                                               "from_s": round(-d[-1]["before_run_s"], 3), "to_s": 0.0}
                breakdown["after the run"] = {"count": 1, "sum_s": round(d[-1]["after_run_s"], 3),
                                              "from_s": round(d[-1]["report"]["duration_ms"] / 1000, 3),
                                              "to_s": round(d[-1]["report"]["duration_ms"] / 1000 + d[-1]["after_run_s"], 3)}
            rows.append({
                "n": n, "batch": args.batch, "interval": interval, "floor": floor,
                "deploy_wall": dw,
                "deploy_before": median([r.get("before_run_s") for r in d if r["ok"]]),
                "deploy_ok": f"{sum(r['ok'] for r in d)}/{len(d)}",
                "ansible_wall": aw, "ansible_ok": f"{sum(r['ok'] for r in a)}/{len(a)}",
                "deploy_rss": max((r["maxrss_kib"] for r in d), default=None),
                "deploy_cpu": median([r.get("cpu_s") for r in d if r["ok"]]),
                "ansible_cpu": median([r.get("cpu_s") for r in a if r["ok"]]),
                "ansible_rss": max((r["maxrss_kib"] for r in a), default=None),
                "deploy_walls": [round(r["wall_s"], 3) for r in d],
                "ansible_walls": [round(r["wall_s"], 3) for r in a],
                "breakdown": breakdown,
            })
            if args.broken and "deploy" in args.tools and args.broken <= n:
                rollbacks.append(bench_rollback(args, world, deploy_bin, runs_dir, interval))
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(world_dir, ignore_errors=True)
        else:
            log(f"kept {world_dir}")


def bench_rollback(args, world: World, deploy_bin: Path, runs_dir: Path, interval: float) -> dict:
    broken = f"app{args.broken}"
    artifact = world.make_artifact(NEW, [broken])
    results = []
    for rep in range(1, (args.rollback_reps or args.reps) + 1):
        world.reset(world.old_artifact)
        before = {k: (v["weight"], v["status"]) for k, v in world.server_stats().items()}
        tag = f"rollback-n{world.n}-i{interval}-r{rep}"
        r = run_deploy(world, deploy_bin, runs_dir, tag, args.batch, interval, args.parallelism,
                       artifact, args.probe_deadline, args.prepare)
        problems = world.check(OLD)
        after = {k: (v["weight"], v["status"]) for k, v in world.server_stats().items()}
        if after != before:
            problems.append("HAProxy weights/states differ from before the run")
        rep_ = r.get("report") or {}
        out = {"rc": r["rc"], "wall_s": r["wall_s"], "maxrss_kib": r["maxrss_kib"],
               "ok": r["rc"] == 2 and not problems, "problems": problems}
        if rep_:
            start = parse_time(rep_["started_at"])
            failed = [s for s in rep_.get("steps", []) if s.get("error")
                      and s["step"].get("target") == broken]
            if failed:
                f = failed[0]
                out["failed_op"] = f["step"]["op"]
                out["failed_from_start_s"] = step_end(f) - start
                out["failed_step_s"] = f["duration_ms"] / 1000
            rb = rep_.get("rollback")
            if rb:
                rb_start = parse_time(rb["started_at"])
                out["forward_s"] = rb_start - start
                out["undo_s"] = parse_time(rep_["finished_at"]) - rb_start
                out["undo_steps"] = len(rb.get("steps", []))
                out["reason"] = rb.get("reason", "")[:200]
        log(f"{tag}: rc {r['rc']} (2 = rolled back), wall {r['wall_s']:.2f} s, "
            f"{broken} failed after {out.get('failed_from_start_s', float('nan')):.2f} s "
            f"({out.get('failed_op')} took {out.get('failed_step_s', float('nan')):.2f} s), "
            f"forward {out.get('forward_s', float('nan')):.2f} s, "
            f"undo {out.get('undo_s', float('nan')):.2f} s, "
            + ("back on 1.0.0 everywhere" if out["ok"] else f"NOT BACK: {problems[:5]} (log {r['log']})"))
        results.append(out)

    def med(key):
        return median([x.get(key) for x in results if x["ok"]])

    return {"n": world.n, "batch": args.batch, "interval": interval, "broken": broken,
            "wall": med("wall_s"), "failed_from_start": med("failed_from_start_s"),
            "failed_step": med("failed_step_s"), "forward": med("forward_s"),
            "undo": med("undo_s"), "undo_steps": results[-1].get("undo_steps"),
            "rss": max(x["maxrss_kib"] for x in results),
            "ok": f"{sum(x['ok'] for x in results)}/{len(results)}",
            "reason": results[-1].get("reason")}


def print_tables(args, rows, rollbacks, ansible_note: str | None) -> None:
    print()
    print(f"Fleet benchmark, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
          f"reps {args.reps}, prepare = \"{args.prepare}\", medians of the runs that did the "
          f"full work (done = runs checked complete / runs).")
    if ansible_note:
        print(f"\n{ansible_note}")
    print()
    print("| N | batch | probe interval | floor | deploy wall | of which before the run "
          "| ratio to floor | ≤ 1.25 × floor + 1 s | Ansible wall | speed-up | CPU deploy / Ansible | peak RSS deploy | peak RSS Ansible (largest process) | done (deploy / Ansible) |")
    print("|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|:---:|")
    for r in rows:
        ratio = r["deploy_wall"] / r["floor"] if r["deploy_wall"] else None
        goal = ("yes" if r["deploy_wall"] <= 1.25 * r["floor"] + 1 else "no") if r["deploy_wall"] else "—"
        speed = (r["ansible_wall"] / r["deploy_wall"]) if r["ansible_wall"] and r["deploy_wall"] else None
        print(f"| {r['n']} | {r['batch']} | {r['interval'] * 1000:g} ms | {fmt_s(r['floor'])} "
              f"| {fmt_s(r['deploy_wall'])} | {fmt_s(r['deploy_before'])} | {'—' if ratio is None else f'{ratio:.2f}×'} | {goal} "
              f"| {fmt_s(r['ansible_wall'])} | {'—' if speed is None else f'{speed:.1f}×'} "
              f"| {fmt_s(r['deploy_cpu'])} / {fmt_s(r['ansible_cpu'])} "
              f"| {fmt_mib(r['deploy_rss'])} | {fmt_mib(r['ansible_rss'])} "
              f"| {r['deploy_ok']} / {r['ansible_ok']} |")
    if rollbacks:
        print()
        print("| N | batch | probe interval | broken host | wall | host declared failed (from start) "
              "| its failed step | ≤ 3 intervals | forward | undo phase | undo ≤ forward | undo steps | peak RSS | back on 1.0.0 |")
        print("|---:|---:|---:|---|---:|---:|---:|:---:|---:|---:|:---:|---:|---:|:---:|")
        for r in rollbacks:
            within = ("yes" if r["failed_step"] <= 3 * r["interval"] else "no") if r["failed_step"] is not None else "—"
            undo_ok = ("yes" if r["undo"] <= r["forward"] else "no") if r["undo"] is not None and r["forward"] is not None else "—"
            print(f"| {r['n']} | {r['batch']} | {r['interval'] * 1000:g} ms | {r['broken']} "
                  f"| {fmt_s(r['wall'])} | {fmt_s(r['failed_from_start'])} | {fmt_s(r['failed_step'])} "
                  f"| {within} | {fmt_s(r['forward'])} | {fmt_s(r['undo'])} | {undo_ok} "
                  f"| {r['undo_steps'] if r['undo_steps'] is not None else '—'} | {fmt_mib(r['rss'])} | {r['ok']} |")
    if args.verbose:
        print()
        print("Where the deploy's time went (last run of each row; per step kind: count, summed "
              "time, first start → last end, seconds from the run's start):")
        for r in rows:
            if r["breakdown"]:
                parts = ", ".join(f"{op} ×{b['count']} Σ{b['sum_s']:.2f} s [{b['from_s']:.2f}→{b['to_s']:.2f}]"
                                  for op, b in r["breakdown"].items())
                print(f"- N={r['n']} {r['interval'] * 1000:g} ms: {parts}")
        print()
        print("All runs' walls (s): " + "; ".join(
            f"N={r['n']} {r['interval'] * 1000:g} ms deploy {r['deploy_walls']} Ansible {r['ansible_walls']}"
            for r in rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="8,32,64,256", help="fleet sizes N (default %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="hosts per batch (default %(default)s)")
    p.add_argument("--intervals", default="1,0.1",
                   help="probe intervals in seconds (default %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="runs per tool and case (default %(default)s)")
    p.add_argument("--tools", default="deploy,ansible", help="deploy,ansible (default %(default)s)")
    p.add_argument("--broken", type=int, default=0, metavar="I",
                   help="also run the rollback scenario: the new release is broken on host app<I> "
                        "(deploy only; skipped when I > N)")
    p.add_argument("--deploy-bin", default=os.environ.get("DEPLOY_BIN", "target/release/deploy"),
                   help="the deploy binary (default $DEPLOY_BIN or target/release/deploy)")
    p.add_argument("--probe-deadline", default="60s",
                   help="the plan's policies.probe.deadline (default %(default)s, the engine's "
                        "default): how long a host that never turns healthy is waited for")
    p.add_argument("--rollback-reps", type=int, default=0,
                   help="runs of the rollback scenario per case (default: --reps)")
    p.add_argument("--parallelism", type=int, default=16,
                   help="the plan's policies.parallelism (default %(default)s, the engine's default)")
    p.add_argument("--prepare", default="all_first", choices=["all_first", "batch_ahead"],
                   help="the rolling strategy's prepare order (default %(default)s, the engine's "
                        "default; batch_ahead prepares each batch during the health waits of the "
                        "batch before it)")
    p.add_argument("--forks", type=int, default=0,
                   help="Ansible's forks (default: the batch size, at least 8)")
    p.add_argument("--haproxy-check-ms", type=int, default=0,
                   help="HAProxy health checks on the servers every MS (default: none)")
    p.add_argument("--tmp", default=None, help="where the worlds are created (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the worlds (logs, reports)")
    p.add_argument("--verbose", action="store_true",
                   help="print where the deploy's time went (from its report) and every wall")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON here")
    args = p.parse_args()
    args.sizes = [int(x) for x in args.sizes.split(",")]
    args.intervals = [float(x) for x in args.intervals.split(",")]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    args.forks = args.forks or max(8, args.batch)
    for t in args.tools:
        if t not in ("deploy", "ansible"):
            p.error(f"unknown tool {t!r}")

    deploy_bin = Path(args.deploy_bin).resolve()
    if "deploy" in args.tools and not os.access(deploy_bin, os.X_OK):
        p.error(f"{deploy_bin} is not an executable (build it: cargo build --release -p deploy-cli)")
    ansible = None
    note = None
    if "ansible" in args.tools:
        ansible = find_ansible()
        if not ansible:
            note = ("Ansible column skipped: `ansible-playbook` is neither on PATH nor in "
                    "$ANSIBLE_PLAYBOOK (install it with `pip install ansible`, e.g. in a venv).")
            log(note)
        else:
            v = subprocess.run([ansible, "--version"], capture_output=True, text=True).stdout
            note = f"Ansible: {v.splitlines()[0] if v else ansible} ({ansible})."
            log(note)

    rows, rollbacks = [], []
    interrupted = False
    try:
        for n in args.sizes:
            bench_size(args, n, deploy_bin, ansible, rows, rollbacks)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; the servers were stopped; figures so far:")
    print_tables(args, rows, rollbacks, note)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "rollbacks": rollbacks}, indent=1))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
