"""What the template checks share: the problems found, and a model of an ARM template without deploying it.

* Scope: the values an ARM expression can take where they can be known (variables, parameters' allowed values or
  assumed values, both branches of if(), indexing, properties, and equals/not/and/or/empty/format/union/
  createObject of known values); anything else is an Unknown of the type the expression tells.
* The resources of a template (nested deployments' templates included), their names as resourceId() segments,
  their dependsOn edges and what is reachable through them.

Used by check_azure_types.py, platform_rules.py and build_arm.py (which writes the dependsOn edges Bicep infers).
"""

import re

problems = []


def problem(text):
    problems.append(text)


class Unknown:
    """A value that only exists at deployment time; `kind` is its ARM type when the expression tells it."""

    def __init__(self, kind=None):
        self.kind = kind

    def __repr__(self):
        return f"<{self.kind or 'unknown'} expression>"


STRING_FUNCS = {"format", "toLower", "toUpper", "replace", "uniqueString", "guid", "resourceId", "string",
                "subscriptionResourceId", "extensionResourceId", "dateTimeAdd", "utcNow", "trim", "substring", "base64"}


BOOL_FUNCS = {"equals", "not", "and", "or", "empty", "contains", "startsWith", "endsWith", "bool", "greater", "less"}


INT_FUNCS = {"length", "int", "add", "sub", "mul", "div", "mod"}


def _format(args):
    return re.sub(r"\{(\d+)\}", lambda m: str(args[1 + int(m.group(1))]), args[0])


def _union(args):
    if not all(isinstance(a, dict) for a in args):
        raise TypeError
    out = {}
    for a in args:
        out.update(a)
    return out


KNOWN_FUNCS = {
    "equals": lambda a: a[0] == a[1],
    "not": lambda a: not a[0] if isinstance(a[0], bool) else (_ for _ in ()).throw(TypeError()),
    "and": lambda a: all(a) if all(isinstance(x, bool) for x in a) else (_ for _ in ()).throw(TypeError()),
    "or": lambda a: any(a) if all(isinstance(x, bool) for x in a) else (_ for _ in ()).throw(TypeError()),
    "empty": lambda a: len(a[0]) == 0,
    "greater": lambda a: a[0] > a[1],
    "startsWith": lambda a: a[0].startswith(a[1]),
    "format": _format,
    "union": _union,
}


def balanced(text):
    """Whether brackets and quotes balance in an expression text."""
    depth, quote = 0, False
    for c in text:
        if quote:
            quote = c != "'"
        elif c == "'":
            quote = True
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0 and not quote


def split_args(text):
    """Top-level comma-separated arguments of an ARM function call's argument text."""
    args, depth, quote, start = [], 0, False, 0
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "'":
                if i + 1 < len(text) and text[i + 1] == "'":
                    i += 1
                else:
                    quote = False
        elif c == "'":
            quote = True
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    if text.strip():
        args.append(text[start:].strip())
    return args


def call(text):
    """(name, args) when `text` is exactly one function call, else None."""
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\((.*)\)$", text.strip(), re.S)
    if not m:
        return None
    # The closing parenthesis must close the opening one.
    depth, quote = 0, False
    body = text.strip()[len(m.group(1)):]
    for i, c in enumerate(body):
        if quote:
            quote = c != "'" or (i + 1 < len(body) and body[i + 1] == "'")
        elif c == "'":
            quote = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0 and i != len(body) - 1:
                return None
    return m.group(1), split_args(m.group(2))


class Scope:
    """One template's parameters and variables, with optional assumptions (expression text -> value)."""

    def __init__(self, template, assume=None):
        self.template = template
        self.assume = assume or {}

    def values(self, value):
        """The values a template value can take: concrete Python values and Unknowns."""
        if isinstance(value, str) and value.startswith("[") and not value.startswith("[[") and value.endswith("]"):
            return self.expr(value[1:-1].strip())
        if isinstance(value, str) and value.startswith("[["):
            return [value[1:]]
        return [value]

    def expr(self, text):
        text = text.strip()
        if text in self.assume:
            return [self.assume[text]]
        if re.fullmatch(r"'(?:[^']|'')*'", text):
            return [text[1:-1].replace("''", "'")]
        if re.fullmatch(r"-?\d+", text):
            return [int(text)]
        c = call(text)
        if c:
            name, args = c
            if name == "variables" and len(args) == 1:
                return self.values(self.template.get("variables", {}).get(args[0].strip("'"), None))
            if name == "parameters" and len(args) == 1:
                spec = self.template.get("parameters", {}).get(args[0].strip("'"), {})
                if "allowedValues" in spec:
                    return list(spec["allowedValues"])
                kind = {"securestring": "string", "secureobject": "object"}.get(spec.get("type"), spec.get("type"))
                return [Unknown(kind)]
            if name == "if" and len(args) == 3:
                cond = self.expr(args[0])
                if cond == [True]:
                    return self.expr(args[1])
                if cond == [False]:
                    return self.expr(args[2])
                return self.expr(args[1]) + self.expr(args[2])
            if name == "null":
                return [None]
            if name in ("true", "false"):
                return [name == "true"]
            known = self.known_call(name, args)
            if known is not None:
                return known
            if name in STRING_FUNCS:
                return [Unknown("string")]
            if name in BOOL_FUNCS:
                return [Unknown("bool")]
            if name in INT_FUNCS:
                return [Unknown("int")]
            if name in ("createObject", "union", "json"):
                return [Unknown("object")]
            if name in ("createArray", "split", "range"):
                return [Unknown("array")]
            return [Unknown()]
        # base.property of a known object.
        m = re.match(r"^(.*)\.([A-Za-z_][A-Za-z0-9_]*)$", text, re.S)
        if m and balanced(m.group(1)):
            out = []
            for b in self.expr(m.group(1)):
                out += self.values(b[m.group(2)]) if isinstance(b, dict) and m.group(2) in b else [Unknown()]
            return out
        # base[index]: indexing a known object with a known key.
        m = re.match(r"^(.*)\[([^\[\]]*)\]$", text, re.S)
        if m:
            bases, keys = self.expr(m.group(1)), self.expr(m.group(2))
            out = []
            for b in bases:
                for k in keys:
                    if isinstance(b, dict) and isinstance(k, str) and k in b:
                        out += self.values(b[k])
                    else:
                        out.append(Unknown())
            return out
        return [Unknown()]

    def known_call(self, name, args):
        """The values of a call whose arguments are all known (few enough to enumerate), else None."""
        if name not in ("equals", "not", "and", "or", "empty", "format", "union", "createObject", "greater", "startsWith"):
            return None
        if name == "createObject":
            keys = [self.expr(a) for a in args[0::2]]
            if not all(len(k) == 1 and isinstance(k[0], str) for k in keys):
                return None
            values = [self.expr(a) for a in args[1::2]]
            return [{k[0]: (v[0] if len(v) == 1 else Unknown()) for k, v in zip(keys, values)}]
        choices = [self.expr(a) for a in args]
        if any(isinstance(c, Unknown) for cs in choices for c in cs):
            return None
        combos = [[]]
        for cs in choices:
            combos = [c + [v] for c in combos for v in cs]
            if len(combos) > 64:
                return None
        out = []
        for a in combos:
            try:
                value = KNOWN_FUNCS[name](a)
            except (TypeError, KeyError, IndexError, ValueError):
                return None
            if value not in out:
                out.append(value)
        return out

    def leading_literal(self, text):
        """The characters a string expression is known to start with ('' when unknown)."""
        if text.startswith("[") and not text.startswith("[["):
            return self._lead(text[1:-1].strip())
        return text

    def _lead(self, text):
        if re.fullmatch(r"'(?:[^']|'')*'", text):
            return text[1:-1]
        c = call(text)
        if not c:
            return ""
        name, args = c
        if name == "variables":
            value = self.template.get("variables", {}).get(args[0].strip("'"))
            return self.leading_literal(value) if isinstance(value, str) else ""
        if name == "format" and args and re.fullmatch(r"'(?:[^']|'')*'", args[0]):
            pattern = args[0][1:-1]
            head = pattern.split("{", 1)[0]
            if head:
                return head
            m = re.match(r"\{(\d+)\}", pattern)
            return self._lead(args[1 + int(m.group(1))]) if m and len(args) > 1 + int(m.group(1)) else ""
        if name in ("concat",) and args:
            return self._lead(args[0])
        return ""


def last_name_segment(scope, name):
    """The literal last segment of a resource name ('onedeploy' of format('{0}/onedeploy', ...)), if known."""
    if not name.startswith("["):
        return name.split("/")[-1]
    c = call(name[1:-1])
    if c and c[0] == "format" and re.fullmatch(r"'[^']*'", c[1][0]):
        tail = c[1][0][1:-1].split("/")[-1]
        return None if "{" in tail else tail
    return None


def resources_of(template, where="main.json", assume=None):
    """(scope, resource, where) for every resource, nested deployments' templates included (assumptions apply to the
    top-level template only)."""
    scope = Scope(template, assume)
    for i, r in enumerate(template.get("resources", [])):
        yield scope, r, f"{where}.resources[{i}] {r['type']}"
        props = r.get("properties")
        if isinstance(props, dict) and isinstance(props.get("template"), dict):
            yield from resources_of(props["template"], f"{where}.resources[{i}].template")


def canonical_segments(scope, name):
    """A resource name as a tuple of segment texts, comparable with the arguments of resourceId()."""
    if not name.startswith("["):
        return tuple(f"'{s}'" for s in name.split("/"))
    c = call(name[1:-1])
    if c and c[0] == "format" and re.fullmatch(r"'(?:[^']|'')*'", c[1][0]):
        pattern, args = c[1][0][1:-1], c[1][1:]
        out = []
        for seg in pattern.split("/"):
            m = re.fullmatch(r"\{(\d+)\}", seg)
            if m:
                out.append(args[int(m.group(1))])
            elif "{" in seg:
                used = sorted({int(n) for n in re.findall(r"\{(\d+)\}", seg)})
                renumbered = seg
                for new, old in enumerate(used):
                    renumbered = renumbered.replace(f"{{{old}}}", f"{{@{new}}}")
                renumbered = renumbered.replace("{@", "{")
                out.append(f"format('{renumbered}', {', '.join(args[n] for n in used)})")
            else:
                out.append(f"'{seg}'")
        return tuple(out)
    return (name[1:-1],)


def resource_ids_in(text):
    """(type, segments) of every resourceId(...) call in an expression text."""
    found = []
    for m in re.finditer(r"resourceId\(", text):
        if m.start() > 0 and text[m.start() - 1].isalpha():
            continue  # subscriptionResourceId, extensionResourceId
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        args = split_args(text[m.end():i - 1])
        for j, a in enumerate(args):
            if re.fullmatch(r"'[A-Za-z]+\.[A-Za-z]+/[^']*'", a):
                found.append((a[1:-1].lower(), tuple(args[j + 1:])))
                break
    return found


def declared(template):
    scope = Scope(template)
    out = []
    for r in template.get("resources", []):
        out.append(((r["type"].lower(), canonical_segments(scope, r["name"])), r))
    return out


def dependency_keys(template, r, by_copy):
    keys = set()
    for d in r.get("dependsOn", []):
        if d.startswith("["):
            for ref in resource_ids_in(d[1:-1]):
                keys.add(ref)
        else:
            keys |= by_copy.get(d, set())
    return keys


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        k = todo.pop()
        for n in graph.get(k, ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen
