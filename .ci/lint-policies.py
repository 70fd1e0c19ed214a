#!/usr/bin/env python3
"""Runs parliament (an IAM policy linter) on every inline policy of infra/template.yaml.

Intrinsics are replaced by example ARNs of the right shape, so parliament checks the
actions and resource types. Fails when any finding is above LOW severity.
Parliament's CLI refuses a non-terminal stdin (as in CI), so it is used as a library.
"""
import json
import re
import sys

import yaml
from parliament import analyze_policy_string, enhance_finding

ACCOUNT, REGION = "123456789012", "eu-west-1"
EXAMPLES = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::StackName": "baton",
    "StateBucket": "baton-state",
    "StateBucket.Arn": "arn:aws:s3:::baton-state",
    "EventsTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:baton-events",
    "EcrRepositoryArns": [f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/demo/web"],
    "DeployTargetFunctionArns": [f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:web",
                                 f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:web:*"],
    "TestFunctionArns": [f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:web-smoke-tests"],
}


def example(name):
    if name in EXAMPLES:
        return EXAMPLES[name]
    if name.endswith("Queue.Arn"):
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:baton-{name[:-len('Queue.Arn')].lower()}"
    raise SystemExit(f"lint-policies: no example value for {name}; add one to EXAMPLES")


def resolve(v):
    if isinstance(v, dict):
        if "Fn::Sub" in v:
            return re.sub(r"\$\{([^}]+)\}", lambda m: example(m.group(1)), v["Fn::Sub"])
        if "Ref" in v:
            return example(v["Ref"])
        if "Fn::GetAtt" in v:
            return example(".".join(v["Fn::GetAtt"]))
        return {k: resolve(x) for k, x in v.items()}
    if isinstance(v, list):
        out = []
        for x in v:
            r = resolve(x)
            out.extend(r if isinstance(r, list) and not isinstance(x, list) and isinstance(x, dict) and "Ref" in x else [r])
        return out
    return v


def main(path):
    template = yaml.safe_load(open(path))
    bad = 0
    checked = 0
    for name, res in template["Resources"].items():
        if res["Type"] != "AWS::IAM::Role":
            continue
        for policy in res["Properties"].get("Policies", []):
            doc = resolve(policy["PolicyDocument"])
            checked += 1
            for f in map(enhance_finding, analyze_policy_string(json.dumps(doc)).findings):
                sev = getattr(f, "severity", "UNKNOWN")
                line = f"{name}/{policy['PolicyName']}: {sev} {f.issue} {f.detail}"
                if sev in ("LOW", "INFO"):
                    print("note:", line)
                else:
                    print("FINDING:", line)
                    bad += 1
    print(f"parliament: {checked} policies checked, {bad} findings above LOW")
    return 1 if bad or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "infra/template.yaml"))
