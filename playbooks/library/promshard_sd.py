#!/usr/bin/python
# promshard: put one file_sd file in place on a Prometheus node, in one
# module run (one SSH round trip with pipelining): fence check, content
# check, atomic write, and the reload when the file changed.

DOCUMENTATION = r"""
module: promshard_sd
short_description: Deliver a promshard file_sd file to a Prometheus node
description:
  - Writes I(content_b64) to I(dest) if it differs, through a temp file in the
    same directory that is checked and then renamed, so Prometheus never
    reads a torn or invalid file.
  - With I(epoch), refuses to write when the marker beside the file holds a
    newer epoch (another promshard leader took over), and raises it first.
  - With I(reload_url), POSTs it after the file changed, or when an earlier
    reload failed (remembered in a marker beside the file).
options:
  content_b64: {type: str, required: true, description: the file, base64}
  dest_dir: {type: str, required: true, description: directory of the file}
  name: {type: str, required: true, description: file name in dest_dir}
  create_dir: {type: bool, default: false, description: create dest_dir if missing}
  mode: {type: str, default: "0644", description: octal mode of the file}
  owner: {type: str, description: owner of the file}
  group: {type: str, description: group of the file}
  validate_python: {type: str, description: python that checks the file instead of this module's own}
  validate_cmd: {type: str, description: command that checks the file; must contain %s}
  epoch: {type: int, description: the leader's epoch (promshard ha:)}
  reload_url: {type: str, description: URL POSTed after the file changed}
  reload_validate_certs: {type: bool, default: true, description: for https reload URLs}
  node: {type: str, description: the node, written to the pending-reload marker}
"""

import base64
import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

# The file_sd shape: a list of groups, each with a list of targets. Run
# in-process, or by `validate_python` as `-c CHECK file format`.
CHECK = (
    "import json,sys;"
    "t=open(sys.argv[1]).read();"
    "d=json.loads(t) if sys.argv[2]=='json' else __import__('yaml').safe_load(t);"
    "ok=isinstance(d,list) and all(isinstance(g,dict) and isinstance(g.get('targets'),list) for g in d);"
    "sys.exit(0 if ok else 'not a list of file_sd target groups')"
)


def sd_format(name):
    return "yaml" if name.endswith((".yml", ".yaml")) else "json"


def shape_error(data, fmt):
    """Why `data` is not a file_sd file, or None."""
    try:
        if fmt == "json":
            groups = json.loads(data.decode("utf-8"))
        else:
            import yaml  # only YAML files need PyYAML on the node

            groups = yaml.safe_load(data)
    except Exception as e:  # any parse error is the answer
        return "not valid %s: %s" % (fmt.upper(), e)
    ok = isinstance(groups, list) and all(
        isinstance(g, dict) and isinstance(g.get("targets"), list) for g in groups
    )
    return None if ok else "not a list of file_sd target groups"


def write_atomic(module, path, data, mode, check=None, owner=None, group=None):
    """Write `data` to `path` through a checked temp file beside it."""
    directory, name = os.path.split(path)
    # A hidden name that ends in .tmp: no *.json/*.yml glob matches it.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if check is not None:
            check(tmp)
        if owner:
            module.set_owner_if_different(tmp, owner, False)
        if group:
            module.set_group_if_different(tmp, group, False)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def fence(module, dest_dir, name):
    """Refuse an older epoch than the marker's; raise the marker first."""
    epoch = module.params["epoch"]
    if epoch is None:
        return
    marker = os.path.join(dest_dir, "." + name + ".epoch")
    text = read(marker)
    try:
        held = int(text.strip()) if text else 0
    except ValueError:
        held = 0
    if held > epoch:
        module.fail_json(
            msg="fenced: %s holds epoch %d, newer than this delivery's %d; another leader took over"
            % (marker, held, epoch)
        )
    if held != epoch and not module.check_mode:
        write_atomic(module, marker, b"%d\n" % epoch, 0o644)


def validator(module, fmt):
    """The check run on the temp file before the rename."""
    python, cmd = module.params["validate_python"], module.params["validate_cmd"]

    def run(args):
        rc, out, err = module.run_command(args)
        if rc != 0:
            raise ValueError((err or out).strip() or "exit %d" % rc)

    if cmd:
        return lambda tmp: run(cmd % tmp)
    if python:
        return lambda tmp: run([python, "-c", CHECK, tmp, fmt])
    return None


def reload(module, dest_dir, name, changed):
    """POST the reload URL when the file changed or a reload is owed."""
    url = module.params["reload_url"]
    if not url:
        return False
    pending = os.path.join(dest_dir, "." + name + ".reload-pending")
    if not (changed or os.path.exists(pending)):
        return False
    if module.check_mode:
        return True
    # Imported here: it costs the node's python a tenth of a second, and
    # most runs do not reload.
    from ansible.module_utils.urls import open_url

    try:
        r = open_url(
            url,
            method="POST",
            validate_certs=module.params["reload_validate_certs"],
            timeout=30,
        )
        if r.getcode() not in (200, 204):
            raise ValueError("status %d" % r.getcode())
    except Exception as e:
        # Owed until a later run reloads, even with the file then unchanged.
        write_atomic(module, pending, ((module.params["node"] or "") + "\n").encode(), 0o644)
        module.fail_json(msg="reload failed: %s: %s" % (url, e), changed=changed)
    if os.path.exists(pending):
        os.unlink(pending)
    return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            content_b64=dict(type="str", required=True, no_log=False),
            dest_dir=dict(type="str", required=True),
            name=dict(type="str", required=True),
            create_dir=dict(type="bool", default=False),
            mode=dict(type="str", default="0644"),
            owner=dict(type="str"),
            group=dict(type="str"),
            validate_python=dict(type="str"),
            validate_cmd=dict(type="str"),
            epoch=dict(type="int"),
            reload_url=dict(type="str"),
            reload_validate_certs=dict(type="bool", default=True),
            node=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    dest_dir, name = p["dest_dir"], p["name"]
    if not dest_dir:
        module.fail_json(msg="set dest_dir in the service's push.vars (and run this playbook from promshard)")
    if p["validate_cmd"] and "%s" not in p["validate_cmd"]:
        module.fail_json(msg="sd_validate_cmd must contain %%s (the temp file): %s" % p["validate_cmd"])
    try:
        mode = int(p["mode"], 8)
    except ValueError:
        module.fail_json(msg="sd_file_mode is not an octal mode: %s" % p["mode"])
    data = base64.b64decode(p["content_b64"])
    dest = os.path.join(dest_dir, name)
    fmt = sd_format(name)
    try:
        if not os.path.isdir(dest_dir):
            if os.path.lexists(dest_dir):
                module.fail_json(msg="cannot write %s: %s is not a directory" % (dest, dest_dir))
            if not p["create_dir"]:
                module.fail_json(msg="destination directory %s does not exist (set create_dest_dir: true to create it)" % dest_dir)
            if not module.check_mode:
                os.makedirs(dest_dir, 0o755)
        fence(module, dest_dir, name)
        changed = read(dest) != data or (os.stat(dest).st_mode & 0o7777) != mode
        if changed:
            check = validator(module, fmt)
            if check is None:
                why = shape_error(data, fmt)
                if why:
                    module.fail_json(msg="%s: %s; not written" % (dest, why))
            if not module.check_mode:
                write_atomic(module, dest, data, mode, check, p["owner"], p["group"])
        elif p["owner"] or p["group"]:
            changed = module.set_owner_if_different(dest, p["owner"], False)
            changed = module.set_group_if_different(dest, p["group"], changed)
    except ValueError as e:
        module.fail_json(msg="%s: validation failed: %s; not written" % (dest, e))
    except OSError as e:
        module.fail_json(msg="cannot write %s: %s" % (dest, e))
    reloaded = reload(module, dest_dir, name, changed)
    module.exit_json(changed=changed, dest=dest, reloaded=reloaded)


if __name__ == "__main__":
    main()
