"""Static checks of terraform/ that need no AWS account and no provider download: every file
parses, the contract with the CLI (outputs) holds, the module follows its own rules; then
`terraform fmt`/`validate` and checkov where they are available (skipped with the reason)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from boxer.backends.aws_lambda.facts import REQUIRED_OUTPUTS

MODULE = Path(__file__).resolve().parent.parent / "terraform"
TF_FILES = sorted(MODULE.glob("*.tf"))


def load(name: str) -> dict[str, Any]:
    with open(MODULE / name) as handle:
        return normalize(hcl2.load(handle))


def normalize(value: Any) -> Any:
    """python-hcl2 (8.x) keeps the quotes of labels and string literals; drop them, and its
    `__is_block__` markers, so tests read like the HCL."""
    if isinstance(value, dict):
        return {unquote(k): normalize(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return unquote(value)


def blocks(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    """{name: body} for top-level `variable`/`output` blocks."""
    return {name: body for block in doc.get(kind, []) for name, body in block.items()}


def resources(doc: dict[str, Any], rtype: str) -> dict[str, Any]:
    return {name: body for block in doc.get("resource", []) if rtype in block
            for name, body in block[rtype].items()}


def unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def test_module_layout() -> None:
    assert {p.name for p in TF_FILES} == {"main.tf", "variables.tf", "outputs.tf", "versions.tf", "vm_hosts.tf"}
    assert (MODULE / "README.md").exists()


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: p.name)
def test_every_file_parses(path: Path) -> None:
    with open(path) as handle:
        assert hcl2.load(handle)


def test_outputs_the_cli_reads_exist_with_descriptions() -> None:
    outputs = blocks(load("outputs.tf"), "output")
    missing = [name for name in REQUIRED_OUTPUTS if name not in outputs]
    assert not missing, f"outputs.tf lacks {missing}, which boxer reads"
    assert all(unquote(body.get("description")) for body in outputs.values())
    assert "coordinator_port" in outputs["coordinator_address"]["value"]


def test_variables_have_types_descriptions_and_validation() -> None:
    variables = blocks(load("variables.tf"), "variable")
    for name, body in variables.items():
        assert "type" in body, f"variable {name} has no type"
        assert unquote(body.get("description")), f"variable {name} has no description"
    for name in ("name", "timeout", "memory_size", "ephemeral_storage_size", "coordinator_port",
                 "coordinator_allowed_cidrs", "image_tag"):
        assert "validation" in variables[name], f"variable {name} has no validation block"


def test_timeout_is_validated_against_lambdas_cap() -> None:
    timeout = blocks(load("variables.tf"), "variable")["timeout"]
    (validation,) = timeout["validation"]
    assert "var.timeout <= 900" in validation["condition"]
    assert timeout["default"] == 900


def test_function_is_an_image_with_json_logs() -> None:
    main = load("main.tf")
    function = resources(main, "aws_lambda_function")["this"]
    assert unquote(function["package_type"]) == "Image"
    assert function["timeout"] == "${var.timeout}"
    assert function["memory_size"] == "${var.memory_size}"
    assert function["ephemeral_storage"][0]["size"] == "${var.ephemeral_storage_size}"
    assert unquote(function["logging_config"][0]["log_format"]) == "JSON"
    invoke_config = resources(main, "aws_lambda_function_event_invoke_config")["this"]
    assert invoke_config["maximum_retry_attempts"] == 0


def test_secret_is_a_securestring_from_random_bytes() -> None:
    main = load("main.tf")
    parameter = resources(main, "aws_ssm_parameter")["secret"]
    assert unquote(parameter["type"]) == "SecureString"
    assert "random_bytes.secret.hex" in parameter["value"]


def test_security_group_opens_exactly_the_ports_the_coordinator_serves() -> None:
    """Its port and its relay's (the NAT probes' too), counted as the coordinator counts them
    (nat_traversal/defaults.py). Before, the relay's port was closed: relayed connections and
    `boxer probe-nat` could not work on AWS."""
    from boxer.nat_traversal.defaults import DEFAULT_PORT, RELAY_PORT_OFFSET, relay_port_of

    main = load("main.tf")
    variables = {name: body for block in load("variables.tf")["variable"] for name, body in block.items()}
    assert variables["coordinator_port"]["default"] == DEFAULT_PORT
    ingress = resources(main, "aws_vpc_security_group_ingress_rule")
    control = ingress.pop("control")  # the controller's port, to its own (by default no) sources
    assert (control["from_port"], control["to_port"]) == ("${var.controller_port}", "${var.controller_port}")
    assert control["for_each"] == "${toset(var.controller_allowed_cidrs)}" and control["cidr_ipv4"] == "${each.value}"
    assert variables["controller_allowed_cidrs"]["default"] == []
    offsets = {}
    for name, rule in ingress.items():
        assert rule["from_port"] == rule["to_port"], name
        assert unquote(rule["ip_protocol"]) == "tcp"
        assert rule["cidr_ipv4"] == "${each.value}" and rule["for_each"] == "${toset(var.coordinator_allowed_cidrs)}"
        expression = rule["from_port"].removeprefix("${").removesuffix("}")
        base, _, plus = expression.partition(" + ")
        assert base == "var.coordinator_port", rule["from_port"]
        offsets[name] = int(plus or 0)
    assert sorted(offsets.values()) == [0, RELAY_PORT_OFFSET]
    assert relay_port_of(DEFAULT_PORT) == DEFAULT_PORT + offsets["relay"]
    assert not resources(main, "aws_security_group")["coordinator"].get("ingress")
    egress = resources(main, "aws_vpc_security_group_egress_rule")
    assert [(r["from_port"], r["to_port"]) for r in egress.values()] == [(443, 443)]


# -- the coordinator VM's user data: the units it writes ---------------------------------------

TEMPLATE = MODULE / "templates" / "coordinator-user-data.sh.tftpl"
TEMPLATE_VARS = {
    "region": "eu-west-1", "registry": "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/boxer:v1",
    "controller_image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/boxer:v1-controller",
    "secret_parameter": "/boxer/deployment-secret", "token_parameter": "/boxer/control-token",
    "certificate_parameter": "/boxer/controller-certificate", "parameter_key": "alias/aws/ssm",
    "function_name": "boxer",
    "port": 7000, "control_port": 7443, "vm_host_group": "boxer-vm-hosts", "vm_host_port": 7100,
    "vm_host_token_parameter": "/boxer/vm-host-token",
}


def render_user_data(values: dict[str, Any] = TEMPLATE_VARS) -> str:
    """The user data as terraform's templatefile() renders it (`terraform console`, in an empty
    folder: no providers needed), or, without terraform, the same substitution done here (the
    template uses ${name} and nothing else of terraform's template language)."""
    binary = shutil.which("terraform")
    text = TEMPLATE.read_text()
    if binary is None:
        return re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), text)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(TEMPLATE, Path(folder) / "t.tftpl")
        assignments = ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
        run = subprocess.run([binary, f"-chdir={folder}", "console"], input=f'templatefile("t.tftpl", {{{assignments}}})\n',
                             capture_output=True, text=True, timeout=60, check=True)
    body = run.stdout.strip()
    assert body.startswith("<<EOT\n") and body.endswith("\nEOT"), body[:200]
    return body[len("<<EOT\n"):-len("\nEOT")] + "\n"


def units(script: str) -> dict[str, dict[str, list[str]]]:
    """{unit name: {key: [values]}} of every unit the script writes (cat > ...service <<UNIT),
    continuation lines joined."""
    found = {}
    for name, body in re.findall(r"cat > /etc/systemd/system/([\w-]+)\.service <<UNIT\n(.*?)\nUNIT\n", script, re.S):
        keys: dict[str, list[str]] = {}
        for line in body.replace("\\\n", " ").splitlines():
            if "=" in line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                keys.setdefault(key, []).append(value)
        found[name] = keys
    return found


def test_the_user_data_starts_the_coordinator_and_the_controller_beside_it() -> None:
    import shlex

    script = render_user_data()
    assert "${" not in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", "-s", "bash", "-"], input=script, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    written = units(script)
    assert set(written) == {"boxer-coordinator", "boxer-controller"}
    assert re.search(r"^systemctl enable --now boxer-coordinator boxer-controller$", script, re.M)
    commands = {}
    for name, keys in written.items():
        assert keys["Restart"] == ["always"], name
        (exec_start,) = keys["ExecStart"]
        words = shlex.split(exec_start)
        assert words[:2] == ["/usr/bin/docker", "run"] and "--network" in words and words[words.index("--network") + 1] == "host"
        assert words[words.index("--entrypoint") + 1] == "/opt/boxer/bin/python"  # the image's own venv
        commands[name] = words[words.index("--entrypoint") + 3:]
        assert keys["ExecStartPre"] == [f"-/usr/bin/docker rm -f {name}"] and keys["ExecStop"] == [f"/usr/bin/docker stop {name}"]
    coordinator = written["boxer-coordinator"]["ExecStart"][0]
    assert TEMPLATE_VARS["image"] + " " in coordinator
    assert commands["boxer-coordinator"] == ["-m", "boxer", "coordinator", "--listen", "0.0.0.0:7000", "--secret-file",
                                             "/run/boxer/secret"]
    controller = written["boxer-controller"]
    assert TEMPLATE_VARS["controller_image"] + " " in controller["ExecStart"][0]
    assert "boxer-coordinator.service" in controller["After"][0] and controller["Wants"] == ["boxer-coordinator.service"]
    assert commands["boxer-controller"] == [
        "-m", "boxer.controller.daemon", "--serve", "--backend", "lambda", "--outputs", "/etc/boxer/control/outputs.json",
        "--control-listen", "0.0.0.0:7443", "--control-cert", "/etc/boxer/control/tls.crt",
        "--control-key", "/etc/boxer/control/tls.key", "--control-token-file", "/etc/boxer/control/token",
        "--control-socket", "/var/lib/boxer/control/sock"]
    # The token comes from SSM; the certificate is made here and published; the outputs the
    # controller reads name the coordinator on loopback.
    assert f'--name "{TEMPLATE_VARS["token_parameter"]}" --with-decryption' in script
    assert (f'put-parameter --region "eu-west-1" --name "{TEMPLATE_VARS["certificate_parameter"]}" --type SecureString '
            '--key-id "alias/aws/ssm" --overwrite --value "file:///etc/boxer/control/tls.crt"') in script.replace("\\\n  ", "")
    outputs = json.loads(re.search(r"outputs.json <<JSON\n(.*?)\nJSON\n", script, re.S).group(1))
    assert {k: v["value"] for k, v in outputs.items()} == {
        "function_name": "boxer", "coordinator_address": "127.0.0.1:7000",
        "secret_parameter_name": "/boxer/deployment-secret", "region": "eu-west-1",
        "vm_host_group": "boxer-vm-hosts", "vm_host_port": 7100,
        "vm_host_token_parameter_name": "/boxer/vm-host-token"}
    # The vm hosts' group, named as vm_hosts.tf names it (a reference would be a cycle).
    group = resources(load("vm_hosts.tf"), "aws_autoscaling_group")["vm_host"]["name"]
    (passed,) = [c for c in resources(load("main.tf"), "aws_instance")["coordinator"]["user_data"].split(",")
                 if "vm_host_group" in c]
    assert group == "${var.name}-vm-hosts" and '"${var.name}-vm-hosts"' in passed, (group, passed)
    from boxer.backends.aws_lambda.facts import LambdaFacts

    facts = LambdaFacts.from_outputs(outputs)
    assert facts.vm_host_token_parameter_name == "/boxer/vm-host-token"
    # ... and the token's parameter, named as vm_hosts.tf names it.
    parameter = resources(load("vm_hosts.tf"), "aws_ssm_parameter")["vm_host_token"]["name"]
    (passed,) = [c for c in resources(load("main.tf"), "aws_instance")["coordinator"]["user_data"].split(",")
                 if "vm_host_token_parameter" in c]
    assert parameter == "/${var.name}/vm-host-token" and '"/${var.name}/vm-host-token"' in passed, passed
    assert (facts.vm_host_group, facts.vm_host_port, facts.coordinator_address) == ("boxer-vm-hosts", 7100,
                                                                                  "127.0.0.1:7000")
    from boxer.backends.aws_lambda.facts import REQUIRED_OUTPUTS

    assert set(REQUIRED_OUTPUTS) <= set(outputs)


def test_the_controller_unit_serves_with_the_certificate_the_user_data_makes(tmp_path: Path) -> None:
    """The controller unit's command, run here (loopback, the /etc/boxer/control files in a
    temporary folder) with a certificate made by the user data's own openssl line and a token
    like terraform's: a client that checks the certificate against it, by the name the
    certificate is for, and presents the token, is answered (no deployment yet); a wrong token
    is refused."""
    import shlex
    import socket
    import sys
    import time

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    from boxer.controller.api.client import ControlClient, ControlError

    script = render_user_data()
    (make_cert,) = re.findall(r"^\s*(openssl req .*)$", script, re.M)
    control = tmp_path / "control"
    control.mkdir()
    subprocess.run(shlex.split(make_cert.replace("/etc/boxer/control", str(control))), check=True, capture_output=True)
    token = "".join(__import__("secrets").choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                    for _ in range(48))  # random_password: 48, no special characters
    (control / "token").write_text(token + "\n")  # `aws ssm get-parameter --output text` ends it with a newline
    (control / "outputs.json").write_text(json.dumps({"function_name": {"value": "boxer"}}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    words = shlex.split(units(script)["boxer-controller"]["ExecStart"][0])
    argv = [a.replace("/etc/boxer/control", str(control)).replace("/var/lib/boxer", str(tmp_path / "state"))
             .replace("0.0.0.0:7443", f"127.0.0.1:{port}") for a in words[words.index("--entrypoint") + 3:]]
    env = {**os.environ, "BOXER_DEPLOY_STATE_ROOT": str(tmp_path / "state" / "deploy")}
    proc = subprocess.Popen([sys.executable, *argv], env=env, stderr=subprocess.PIPE)
    try:
        server_name = re.search(r"DNS:([\w-]+)", make_cert).group(1)
        cert = (control / "tls.crt").read_bytes()
        client = ControlClient.at(f"127.0.0.1:{port}", ca=cert, token=token, server_name=server_name)
        deadline = time.monotonic() + 20
        with client:
            while True:
                try:
                    client.status(timeout=2)
                except ControlError as exc:
                    if "no deployment runs on the controller" in str(exc):
                        break
                    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                    assert time.monotonic() < deadline, exc
                    time.sleep(0.2)
        with ControlClient.at(f"127.0.0.1:{port}", ca=cert, token="x" * 48, server_name=server_name) as bad, \
                pytest.raises(ControlError, match="refused the credential"):
            bad.status(timeout=5)
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_coordinator_has_a_fixed_public_address() -> None:
    main = load("main.tf")
    eip = resources(main, "aws_eip")["coordinator"]
    assert eip["instance"] == "${aws_instance.coordinator.id}"


def test_roles_are_least_privilege() -> None:
    text = (MODULE / "main.tf").read_text()
    # No wildcard actions anywhere; wildcard resources only for the actions AWS defines no
    # resource for (ecr:GetAuthorizationToken, lambda:GetAccountSettings), one action each.
    assert not re.search(r'actions\s*=\s*\[[^\]]*"\*"', text)
    assert not re.search(r'"[a-z0-9]+:\*"', text)
    wildcard_actions = re.findall(r'actions\s*=\s*\[([^\]]*)\]\n\s*resources = \["\*"\]', text)
    assert sorted(wildcard_actions) == ['"ecr:GetAuthorizationToken"', '"lambda:GetAccountSettings"']
    assert text.count('resources = ["*"]') == 2
    documents = [b for b in load("main.tf")["data"] if "aws_iam_policy_document" in b]
    names = {name for b in documents for name in b["aws_iam_policy_document"]}
    assert {"function", "controller", "coordinator"} <= names
    function_actions = {
        action
        for b in documents if "function" in b["aws_iam_policy_document"]
        for statement in b["aws_iam_policy_document"]["function"]["statement"]
        for action in statement["actions"]
    }
    # The function holds no secret: each event carries its instance's token (docs/security.md).
    assert function_actions == {"logs:CreateLogStream", "logs:PutLogEvents"}
    function_policy = re.search(r'data "aws_iam_policy_document" "function" \{.*?\n\}', text, re.S)
    assert function_policy is not None and "secret" not in function_policy.group(0)


def _render(template: Path, values: dict[str, Any]) -> str:
    """What templatefile() makes of the template: ${name} replaced (these templates use no other
    interpolation; a leftover ${ would be one, and fails the test)."""
    text = template.read_text()
    for key, value in values.items():
        text = text.replace("${" + key + "}", str(value))
    assert "${" not in text, re.findall(r"\$\{[^}]*\}", text)
    return text


def test_vm_host_user_data_runs_the_host_daemon_as_a_unit(tmp_path: Path) -> None:
    """The launch template's user data: every variable it names is passed, it is valid bash, and
    the unit it writes runs `boxer host serve` from the image's venv on the outputs' port, with the
    secret as a file; the command is one the CLI accepts."""
    vm = load("vm_hosts.tf")
    template = resources(vm, "aws_launch_template")["vm_host"]
    passed = set(re.findall(r"(\w+)\s*=", template["user_data"].split("{", 1)[1]))
    text = (MODULE / "templates" / "vm-host-user-data.sh.tftpl").read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) <= passed
    rendered = _render(MODULE / "templates" / "vm-host-user-data.sh.tftpl", {
        "region": "eu-west-1", "registry": "1.dkr.ecr.eu-west-1.amazonaws.com",
        "image": "1.dkr.ecr.eu-west-1.amazonaws.com/boxer-demo:v1", "token_parameter": "/boxer-demo/vm-host-token",
        "port": 7100, "slots": 1})
    script = tmp_path / "user-data.sh"
    script.write_text(rendered)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    unit = rendered.split("<<UNIT\n", 1)[1].split("\nUNIT\n", 1)[0]
    assert "[Service]" in unit and "Restart=always" in unit and "WantedBy=multi-user.target" in unit
    exec_start = " ".join(unit.split("ExecStart=", 1)[1].split("\n# ")[0].replace("\\\n", " ").split())
    assert "--network host" in exec_start and "--entrypoint /opt/boxer/bin/python" in exec_start
    daemon_argv = exec_start.split("/opt/boxer/bin/python ", 1)[1].split()[1:]  # after the image
    assert daemon_argv[:4] == ["-m", "boxer", "host", "serve"]
    assert daemon_argv[daemon_argv.index("--listen") + 1] == "0.0.0.0:7100"
    assert daemon_argv[daemon_argv.index("--token-file") + 1] == "/run/boxer/host-token"
    assert "-v /etc/boxer/host-token:/run/boxer/host-token:ro" in exec_start
    from boxer.backends.emulators.sandbox import LAMBDA_UID

    # Instances run as Lambda's user, not the daemon's root, and may still bind a low port.
    assert daemon_argv[daemon_argv.index("--run-as") + 1] == f"{LAMBDA_UID}:{LAMBDA_UID}"
    assert "net.ipv4.ip_unprivileged_port_start = 0" in rendered
    # The host holds its daemon's token, never the deployment secret (its instances' apps run there).
    assert "secret" not in exec_start and '--name "/boxer-demo/vm-host-token"' in rendered
    assert "systemctl enable --now boxer-host" in rendered
    # The command parses as the CLI's own (the options exist).
    from click.testing import CliRunner

    from boxer.cli.host import serve_command

    args = daemon_argv[4:]
    args[args.index("--token-file") + 1] = str(tmp_path / "absent")
    result = CliRunner().invoke(serve_command, args)
    assert "no such option" not in (result.output or "").lower() and result.exit_code == 2
    assert "no credential for the host daemon" in result.output


def test_vm_tier_outputs_and_rules() -> None:
    """The outputs the controller reads for the vm tier exist; the daemon port is open to the
    coordinator (where the controller runs) and nothing else comes in; the controller may list the
    group; the hosts' port default is the daemon's."""
    from boxer.backends.aws_lambda.facts import VM_OUTPUTS
    from boxer.backends.vmhost.protocol import DEFAULT_PORT

    vm = load("vm_hosts.tf")
    assert set(VM_OUTPUTS) <= set(blocks(vm, "output"))
    assert blocks(vm, "variable")["vm_host_port"]["default"] == DEFAULT_PORT
    ingress = resources(vm, "aws_vpc_security_group_ingress_rule")
    assert list(ingress) == ["vm_host_daemon"]
    rule = ingress["vm_host_daemon"]
    assert rule["from_port"] == rule["to_port"] == "${var.vm_host_port}"
    assert rule["referenced_security_group_id"] == "${aws_security_group.coordinator.id}"
    egress = resources(vm, "aws_vpc_security_group_egress_rule")
    assert egress["coordinator_to_vm_hosts"]["referenced_security_group_id"] == "${aws_security_group.vm_host[0].id}"
    documents = {name: body for b in vm["data"] if "aws_iam_policy_document" in b
                 for name, body in b["aws_iam_policy_document"].items()}
    assert [sorted(st["actions"]) for st in documents["controller_vm"]["statement"]] == [
        ["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"], ["ssm:GetParameter"]]
    # The hosts read their token's parameter and pull the image: never the deployment secret.
    host_reads = [st for st in documents["vm_host"]["statement"] if st["actions"] == ["ssm:GetParameter"]]
    assert [st["resources"] for st in host_reads] == [["${aws_ssm_parameter.vm_host_token[0].arn}"]]
    assert "aws_ssm_parameter.secret" not in (MODULE / "vm_hosts.tf").read_text()
    group = resources(vm, "aws_autoscaling_group")["vm_host"]
    assert group["min_size"] == group["max_size"] == group["desired_capacity"] == "${var.vm_host_count}"


def test_checkov_skips_are_justified_in_place() -> None:
    for path in TF_FILES:
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                match = re.search(r"#checkov:skip=(CKV2?_AWS_\d+):(.{20,})", line)
                assert match, f"{path.name}: skip without a reason: {line.strip()}"


# -- tools, where present ---------------------------------------------------------------------

def _terraform() -> str:
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("terraform binary not found; `terraform fmt -check` not run")
    return binary


def test_terraform_fmt() -> None:
    result = subprocess.run([_terraform(), "fmt", "-check", "-diff", "-recursive", str(MODULE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}"


def test_terraform_validate() -> None:
    binary = _terraform()
    providers = MODULE / ".terraform" / "providers"
    if not providers.is_dir():
        pytest.skip("terraform validate needs the aws and random providers, which are not "
                    "installed here (no registry access); run `terraform -chdir=terraform "
                    "init -backend=false` where the registry is reachable")
    result = subprocess.run([binary, f"-chdir={MODULE}", "validate", "-json"],
                            capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(result.stdout)
    assert report["valid"], report["diagnostics"]


def _checkov() -> str:
    for candidate in (os.environ.get("BOXER_CHECKOV"), shutil.which("checkov"),
                      "/opt/checkov-venv/bin/checkov"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("checkov not found (pip install checkov, or set BOXER_CHECKOV to its path)")


def test_checkov_passes() -> None:
    # --skip-download and BC_SKIP_MAPPING keep checkov offline (it would call its vendor's API).
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    result = subprocess.run(
        [_checkov(), "-d", str(MODULE), "--framework", "terraform", "--skip-download",
         "--quiet", "-o", "json"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 50
