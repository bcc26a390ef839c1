#!/usr/bin/env python3
"""Checks the deployment files in contrib/deploy/ against each other and against the relay
binary, so that they cannot drift from what the relay accepts. Run by tests/run:

    python3 contrib/deploy/check.py path/to/relay

Needs PyYAML (Debian: python3-yaml). The systemd unit itself is checked by
`systemd-analyze verify` in tests/run; this script checks what no generic tool can: every
RELAY_* variable exists, the Secret the DaemonSet reads exists, the metrics port is the same
everywhere, the Dockerfile ships the static binary from scratch.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
# The relay's own per-connection deadline for /metrics (src/driver/http.rs).
HTTP_DEADLINE_SECONDS = 5
MUSL_TARGET = "x86_64-unknown-linux-musl"

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def relay_env_vars(relay):
    help_text = subprocess.run(
        [relay, "--help"], check=True, capture_output=True, text=True, timeout=10
    ).stdout
    names = set(re.findall(r"\[env: ([A-Z0-9_]+)", help_text))
    check(len(names) >= 5, f"found only {sorted(names)} in `relay --help`")
    return names | {"RUST_LOG"}


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def seconds(duration):
    match = re.fullmatch(r"(\d+)s", duration)
    check(match is not None, f"duration {duration!r} is not in seconds")
    return int(match.group(1)) if match else 0


def check_env_file(env_vars):
    """The systemd environment file: known variables only, commented examples included."""
    path = HERE / "systemd" / "relay.env"
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        assignment = re.fullmatch(r"#?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if assignment is None:
            check(not line.strip() or line.startswith("#"), f"{path}:{number}: {line!r}")
            continue
        name, value = assignment.groups()
        check(name in env_vars, f"{path}:{number}: {name} is not a relay variable")
        if not line.startswith("#"):
            values[name] = value
    check("RELAY_AUTH_SECRET" in values, f"{path}: no RELAY_AUTH_SECRET")
    return port_of(values["RELAY_METRICS_ADDR"]), int(values.get("RELAY_DRAIN_SECONDS", "0"))


def check_unit(drain_seconds):
    path = HERE / "systemd" / "relay.service"
    text = path.read_text()
    # systemd must let a drain run to its end before it kills the relay.
    stop = re.search(r"^TimeoutStopSec=(\d+)s$", text, re.M)
    check(stop and int(stop.group(1)) > drain_seconds, f"{path}: TimeoutStopSec not above RELAY_DRAIN_SECONDS")
    for setting in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "EnvironmentFile=/etc/relay/relay.env",
        "ExecStart=/usr/local/bin/relay",
    ]:
        check(re.search(rf"^{re.escape(setting)}$", text, re.M), f"{path}: no {setting}")
    limit = re.search(r"^LimitNOFILE=(\d+)$", text, re.M)
    # Two families × the default 16384-port range, plus listeners and scrapes.
    check(limit and int(limit.group(1)) >= 2 * 16384 + 64, f"{path}: LimitNOFILE too low")


def load_yaml(path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    check(documents, f"{path}: empty")
    return documents


def check_kubernetes(env_vars):
    (secret,) = load_yaml(HERE / "kubernetes" / "secret.yaml")
    (daemonset,) = load_yaml(HERE / "kubernetes" / "daemonset.yaml")
    check(secret["kind"] == "Secret" and secret["apiVersion"] == "v1", "secret.yaml: not a v1 Secret")
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    check(
        (daemonset["kind"], daemonset["apiVersion"]) == ("DaemonSet", "apps/v1"),
        "daemonset.yaml: not an apps/v1 DaemonSet",
    )
    check(
        daemonset["metadata"]["namespace"] == secret["metadata"]["namespace"],
        "the DaemonSet and the Secret are in different namespaces",
    )
    template = daemonset["spec"]["template"]
    labels = template["metadata"]["labels"]
    for key, value in daemonset["spec"]["selector"]["matchLabels"].items():
        check(labels.get(key) == value, f"selector {key}={value} does not match the pod labels")
    spec = template["spec"]
    check(spec.get("hostNetwork") is True, "the DaemonSet must use hostNetwork")
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name in env:
        check(name in env_vars, f"daemonset.yaml: {name} is not a relay variable")
    reference = env["RELAY_AUTH_SECRET"]["valueFrom"]["secretKeyRef"]
    check(
        reference["name"] == secret["metadata"]["name"] and reference["key"] in secret_keys,
        f"daemonset.yaml reads secret {reference}, secret.yaml defines "
        f"{secret['metadata']['name']} with keys {sorted(secret_keys)}",
    )
    ports = {p["name"]: p for p in container["ports"]}
    check(ports["turn"]["protocol"] == "UDP", "the TURN port must be UDP")
    check(ports["turn-tcp"]["protocol"] == "TCP", "turn-tcp must be TCP")
    check(ports["turns"]["protocol"] == "TCP", "turns must be TCP")
    listen_ports = {port_of(a) for a in env["RELAY_LISTEN_ADDR"]["value"].split(",")}
    check(
        {ports["turn"]["containerPort"], ports["turn-tcp"]["containerPort"]} <= listen_ports,
        "the turn ports differ from RELAY_LISTEN_ADDR",
    )
    tls_ports = {port_of(a) for a in env["RELAY_TLS_LISTEN_ADDR"]["value"].split(",")}
    check(ports["turns"]["containerPort"] in tls_ports, "turns differs from RELAY_TLS_LISTEN_ADDR")
    # The certificate files come from the TLS Secret's volume.
    (tls_secret,) = load_yaml(HERE / "kubernetes" / "tls-secret.yaml")
    check(tls_secret["type"] == "kubernetes.io/tls", "tls-secret.yaml: not a kubernetes.io/tls Secret")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for name, key in (("RELAY_TLS_CERT_FILE", "tls.crt"), ("RELAY_TLS_KEY_FILE", "tls.key")):
        path = env[name]["value"]
        mounts = [m for m in container.get("volumeMounts", []) if path == f"{m['mountPath']}/{key}"]
        check(
            len(mounts) == 1
            and volumes.get(mounts[0]["name"], {}).get("secret", {}).get("secretName")
            == tls_secret["metadata"]["name"],
            f"daemonset.yaml: {name}={path} is not {key} of the Secret {tls_secret['metadata']['name']}",
        )
    metrics_port = port_of(env["RELAY_METRICS_ADDR"]["value"])
    check(ports["metrics"]["containerPort"] == metrics_port, "metrics port differs from RELAY_METRICS_ADDR")
    for probe in ("readinessProbe", "livenessProbe"):
        port = container[probe]["httpGet"]["port"]
        check(port in ports, f"{probe} uses unknown port {port}")
    check(container["readinessProbe"]["httpGet"]["path"] == "/healthz", "readiness must be /healthz")
    # Kubernetes must let a drain (SIGTERM with RELAY_DRAIN_SECONDS) end before its SIGKILL.
    drain = int(env.get("RELAY_DRAIN_SECONDS", {}).get("value", "0"))
    check(
        spec.get("terminationGracePeriodSeconds", 30) > drain,
        "terminationGracePeriodSeconds is not above RELAY_DRAIN_SECONDS",
    )
    # /healthz is 503 on a full relay: as liveness it would restart a busy relay.
    check(container["livenessProbe"]["httpGet"]["path"] == "/livez", "liveness must be /livez")
    security = container["securityContext"]
    check(security.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    check(security.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    return metrics_port


def check_prometheus(metrics_port):
    (config,) = load_yaml(HERE / "prometheus" / "scrape.yaml")
    jobs = config["scrape_configs"]
    names = [job["job_name"] for job in jobs]
    check(len(names) == len(set(names)), f"duplicate job names {names}")
    for job in jobs:
        check(job.get("metrics_path", "/metrics") == "/metrics", f"{job['job_name']}: metrics_path")
        timeout = seconds(job.get("scrape_timeout", "10s"))
        check(timeout <= HTTP_DEADLINE_SECONDS, f"{job['job_name']}: scrape_timeout above the relay's deadline")
        check(timeout <= seconds(job.get("scrape_interval", "60s")), f"{job['job_name']}: timeout > interval")
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                check(port_of(target) == metrics_port, f"target {target} is not on port {metrics_port}")
        check(job.get("static_configs") or job.get("kubernetes_sd_configs"), f"{job['job_name']}: no targets")


def dockerfile_instructions(path):
    """(instruction, arguments) per logical line, continuation lines joined."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    check(not pending, f"{path}: ends inside a continued line")
    return instructions


def check_dockerfile(metrics_port):
    path = HERE / "docker" / "Dockerfile"
    known = {"FROM", "RUN", "COPY", "WORKDIR", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "ENV", "ARG", "LABEL"}
    instructions = dockerfile_instructions(path)
    for word, _ in instructions:
        check(word in known, f"{path}: unknown instruction {word}")
    check(instructions[0][0] in ("FROM", "ARG"), f"{path}: must start with FROM")
    stages, current = [], None
    for word, rest in instructions:
        if word == "FROM":
            parts = rest.split()
            current = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append((parts[0], current))
        elif word == "COPY" and rest.startswith("--from="):
            source = rest.split()[0].removeprefix("--from=")
            check(source in [s[1] for s in stages[:-1]], f"{path}: COPY --from={source}: no such stage")
    check(stages[-1][0] == "scratch", f"{path}: the final stage must be FROM scratch")
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    builds = [rest for word, rest in instructions if word == "RUN" and "cargo build" in rest]
    check(builds, f"{path}: no cargo build")
    for build in builds:
        check("--release" in build and f"--target {MUSL_TARGET}" in build, f"{path}: {build!r} is not the musl release build")
    entrypoint = [rest for word, rest in final if word == "ENTRYPOINT"]
    check(len(entrypoint) == 1 and isinstance(json.loads(entrypoint[0]), list), f"{path}: ENTRYPOINT must be an exec-form JSON list")
    check(any(w == "USER" and not r.startswith("0") for w, r in final), f"{path}: the image must not run as root")
    exposed = [rest for word, rest in final if word == "EXPOSE"]
    check(exposed and f"{metrics_port}/tcp" in exposed[0].split() and "3478/udp" in exposed[0].split(), f"{path}: EXPOSE {exposed}")
    # Every path copied from the build context is let through by the Dockerfile's ignore file.
    ignore = (HERE / "docker" / "Dockerfile.dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, rest in instructions:
        if word == "COPY" and not rest.startswith("--from="):
            for source in rest.split()[:-1]:
                check(source.rstrip("/") in allowed, f"{path}: COPY {source} is excluded by Dockerfile.dockerignore")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check.py path/to/relay")
    env_vars = relay_env_vars(sys.argv[1])
    env_file_metrics_port, drain_seconds = check_env_file(env_vars)
    check_unit(drain_seconds)
    metrics_port = check_kubernetes(env_vars)
    check(env_file_metrics_port == metrics_port, "relay.env and the DaemonSet use different metrics ports")
    check_prometheus(metrics_port)
    check_dockerfile(metrics_port)
    if failures:
        print("contrib/deploy:", *failures, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print(f"contrib/deploy: ok (systemd env, unit, Kubernetes, Prometheus, Dockerfile; metrics port {metrics_port})")


if __name__ == "__main__":
    main()
