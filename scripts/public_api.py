#!/usr/bin/env python3
"""scripts/public_api.py: the public API of a crate as sorted text lines, from its rustdoc JSON.

    python3 scripts/public_api.py target/doc/forkline.json > crates/forkline/public-api.txt

Run through scripts/public-api.sh, which makes the JSON and compares the result with the
committed snapshot. One line per public item, by every public path it is reachable at (a
re-export is a path of its own): modules, structs and their public fields, enums and their
variants, unions, traits and their items, functions with their signatures, inherent methods,
associated constants and types, constants, statics, type aliases, macros, and the trait impls
of each public type (auto traits such as Send and Sync included; blanket impls left out: they
follow from the others). Members are listed once, under the item's shortest path. Types are
written with the full path of what they name, so a re-export moved or a type changed in a
signature shows as a changed line.
"""

import json
import sys


class Api:
    def __init__(self, doc):
        self.doc = doc
        self.index = doc["index"]
        self.paths = doc["paths"]
        self.public = {}  # item id -> every public path it is reachable at
        self.lines = []  # (sort key, line)

    def item(self, item_id):
        return self.index.get(str(item_id))

    # -----------------------------------------------------------------------------------------
    # Where each item can be named from outside the crate.

    def walk(self, module_id, prefix, seen):
        module = self.item(module_id)
        if module is None or module_id in seen:
            return
        seen = seen | {module_id}
        for child_id in module["inner"]["module"]["items"]:
            child = self.item(child_id)
            if child is None or child["visibility"] != "public":
                continue
            kind, inner = kind_of(child)
            if kind == "use":
                target = inner.get("id")
                if inner["is_glob"]:
                    if target is not None and self.item(target) is not None:
                        self.walk(target, prefix, seen)
                    else:
                        self.lines.append((prefix + "::*", f"pub use {prefix}::* = {inner['source']}::*"))
                    continue
                path = f"{prefix}::{inner['name']}"
                if target is not None and self.item(target) is not None:
                    self.reach(target, path, seen)
                else:  # something of another crate, re-exported
                    self.lines.append((path, f"pub use {path} = {self.external(target, inner['source'])}"))
                continue
            self.reach(child_id, f"{prefix}::{child['name']}", seen)

    def reach(self, item_id, path, seen):
        self.public.setdefault(item_id, []).append(path)
        if kind_of(self.item(item_id))[0] == "module":
            self.walk(item_id, path, seen)

    def external(self, item_id, fallback):
        summary = self.paths.get(str(item_id)) if item_id is not None else None
        return "::".join(summary["path"]) if summary else fallback

    def canonical(self, item_id):
        paths = self.public.get(item_id)
        if paths:
            return min(paths, key=lambda p: (p.count("::"), p))
        summary = self.paths.get(str(item_id))
        return "::".join(summary["path"]) if summary else None

    # -----------------------------------------------------------------------------------------
    # Types, generics, bounds.

    def ty(self, t):
        if t is None:
            return "()"
        kind, v = next(iter(t.items())) if isinstance(t, dict) else (t, None)
        if kind == "resolved_path":
            return self.path(v)
        if kind in ("generic", "primitive"):
            return v
        if kind == "tuple":
            inner = ", ".join(self.ty(x) for x in v)
            return f"({inner},)" if len(v) == 1 else f"({inner})"
        if kind == "slice":
            return f"[{self.ty(v)}]"
        if kind == "array":
            return f"[{self.ty(v['type'])}; {v['len']}]"
        if kind == "borrowed_ref":
            life = f"{v['lifetime']} " if v.get("lifetime") else ""
            return f"&{life}{'mut ' if v['is_mutable'] else ''}{self.ty(v['type'])}"
        if kind == "raw_pointer":
            return f"*{'mut' if v['is_mutable'] else 'const'} {self.ty(v['type'])}"
        if kind == "impl_trait":
            return "impl " + " + ".join(self.bound(b) for b in v)
        if kind == "dyn_trait":
            parts = [self.poly(p) for p in v["traits"]]
            if v.get("lifetime"):
                parts.append(v["lifetime"])
            return "dyn " + " + ".join(parts)
        if kind == "function_pointer":
            sig = v["sig"]
            inputs = ", ".join(self.ty(x[1]) for x in sig["inputs"])
            out = f" -> {self.ty(sig['output'])}" if sig.get("output") else ""
            return f"{header(v['header'])}fn({inputs}){out}"
        if kind == "qualified_path":
            args = self.args(v.get("args"))
            if v.get("trait"):
                return f"<{self.ty(v['self_type'])} as {self.path(v['trait'])}>::{v['name']}{args}"
            return f"{self.ty(v['self_type'])}::{v['name']}{args}"
        if kind == "infer":
            return "_"
        if kind == "pat":
            return self.ty(v["type"])
        return json.dumps(t, sort_keys=True)

    def path(self, p):
        name = self.canonical(p.get("id")) if p.get("id") is not None else None
        return (name or p.get("path") or p.get("name")) + self.args(p.get("args"))

    def args(self, a):
        if not a:
            return ""
        if a == "return_type_notation":
            return "(..)"
        kind, v = next(iter(a.items()))
        if kind == "angle_bracketed":
            parts = [self.arg(x) for x in v["args"]]
            parts += [self.constraint(c) for c in v.get("constraints", [])]
            return f"<{', '.join(parts)}>" if parts else ""
        if kind == "parenthesized":
            out = f" -> {self.ty(v['output'])}" if v.get("output") else ""
            return f"({', '.join(self.ty(x) for x in v['inputs'])}){out}"
        return json.dumps(a, sort_keys=True)

    def arg(self, a):
        if a == "infer":
            return "_"
        kind, v = next(iter(a.items()))
        if kind == "lifetime":
            return v
        if kind == "type":
            return self.ty(v)
        if kind == "const":
            return v.get("expr") or v.get("value") or "_"
        return json.dumps(a, sort_keys=True)

    def constraint(self, c):
        name = c["name"] + self.args(c.get("args"))
        kind, v = next(iter(c["binding"].items()))
        if kind == "equality":
            term_kind, term = next(iter(v.items()))
            return f"{name} = {self.ty(term) if term_kind == 'type' else term.get('expr')}"
        return f"{name}: {' + '.join(self.bound(b) for b in v)}"

    def bound(self, b):
        kind, v = next(iter(b.items()))
        if kind == "trait_bound":
            modifier = {"maybe": "?", "maybe_const": "~const "}.get(v.get("modifier"), "")
            hrtb = self.hrtb(v.get("generic_params"))
            return f"{hrtb}{modifier}{self.path(v['trait'])}"
        if kind == "outlives":
            return v
        if kind == "use":
            names = [x if isinstance(x, str) else next(iter(x.values())) for x in v]
            return f"use<{', '.join(names)}>"
        return json.dumps(b, sort_keys=True)

    def poly(self, p):
        return self.hrtb(p.get("generic_params")) + self.path(p["trait"])

    def hrtb(self, params):
        return f"for<{', '.join(p['name'] for p in params)}> " if params else ""

    def generics(self, g):
        """(`<params>`, ` where ...`) of a Generics object."""
        params = []
        for p in g["params"]:
            kind, v = next(iter(p["kind"].items()))
            if kind == "lifetime":
                out = v.get("outlives") or []
                params.append(p["name"] + (f": {' + '.join(out)}" if out else ""))
            elif kind == "type":
                if v.get("is_synthetic"):
                    continue  # `impl Trait` in argument position: shown in the argument
                text = p["name"]
                if v.get("bounds"):
                    text += ": " + " + ".join(self.bound(b) for b in v["bounds"])
                if v.get("default") is not None:
                    text += f" = {self.ty(v['default'])}"
                params.append(text)
            elif kind == "const":
                text = f"const {p['name']}: {self.ty(v['type'])}"
                if v.get("default") is not None:
                    text += f" = {v['default']}"
                params.append(text)
        preds = []
        for w in g.get("where_predicates", []):
            kind, v = next(iter(w.items()))
            if kind == "bound_predicate":
                preds.append(f"{self.hrtb(v.get('generic_params'))}{self.ty(v['type'])}: "
                             + " + ".join(self.bound(b) for b in v["bounds"]))
            elif kind == "lifetime_predicate":
                preds.append(f"{v['lifetime']}: {' + '.join(v['outlives'])}")
            elif kind == "eq_predicate":
                preds.append(f"{self.ty(v['lhs'])} == {json.dumps(v['rhs'], sort_keys=True)}")
        return (f"<{', '.join(params)}>" if params else "",
                f" where {', '.join(preds)}" if preds else "")

    def signature(self, f):
        params, where = self.generics(f["generics"])
        inputs = []
        for name, t in f["sig"]["inputs"]:
            text = self.ty(t)
            if name == "self":
                inputs.append({"Self": "self", "&Self": "&self", "&mut Self": "&mut self"}
                              .get(text, f"self: {text}"))
            else:
                inputs.append(f"{name}: {text}")
        if f["sig"].get("is_c_variadic"):
            inputs.append("...")
        out = f" -> {self.ty(f['sig']['output'])}" if f["sig"].get("output") else ""
        return params, f"({', '.join(inputs)}){out}{where}"

    # -----------------------------------------------------------------------------------------
    # Items.

    def emit(self, key, line):
        self.lines.append((key, line))

    def describe(self, item_id, path, full):
        """The line(s) of an item at `path`; its members too when `full`."""
        item = self.item(item_id)
        kind, v = kind_of(item)
        attrs = non_exhaustive(item)
        if kind == "module":
            self.emit(path, f"pub mod {path}")
        elif kind in ("struct", "union"):
            params, where = self.generics(v["generics"])
            shape = v["kind"] if kind == "struct" else {"plain": v}
            skind, sv = (shape, None) if isinstance(shape, str) else next(iter(shape.items()))
            if skind == "unit":
                body = ";"
            elif skind == "tuple":
                fields = [("pub " + self.ty(self.item(f)["inner"]["struct_field"])) if f is not None
                          else "_" for f in sv]
                body = f"({', '.join(fields)})"
            else:
                body = " { .. }" if sv["has_stripped_fields"] else ""  # the fields follow
            self.emit(path, f"{attrs}pub {kind} {path}{params}{body}{where}")
            if full and skind == "plain":
                for field_id in sv["fields"]:
                    field = self.item(field_id)
                    self.emit(f"{path}::{field['name']}",
                              f"pub field {path}::{field['name']}: "
                              f"{self.ty(field['inner']['struct_field'])}")
        elif kind == "enum":
            params, where = self.generics(v["generics"])
            body = " { .. }" if v["has_stripped_variants"] else ""
            self.emit(path, f"{attrs}pub enum {path}{params}{where}{body}")
            if full:
                for variant_id in v["variants"]:
                    self.variant(self.item(variant_id), path)
        elif kind == "function":
            params, sig = self.signature(v)
            self.emit(path, f"pub {header(v['header'])}fn {path}{params}{sig}")
        elif kind == "trait":
            params, where = self.generics(v["generics"])
            bounds = (": " + " + ".join(self.bound(b) for b in v["bounds"])) if v["bounds"] else ""
            flags = ("unsafe " if v["is_unsafe"] else "") + ("auto " if v["is_auto"] else "")
            self.emit(path, f"pub {flags}trait {path}{params}{bounds}{where}")
            if full:
                for member_id in v["items"]:
                    self.member(self.item(member_id), path, in_trait=True)
                for impl_id in v.get("implementations", []):
                    self.trait_impl(self.item(impl_id), self.ty(self.item(impl_id)["inner"]["impl"]["for"]))
        elif kind == "constant":
            self.emit(path, f"pub const {path}: {self.ty(v['type'])}")
        elif kind == "static":
            self.emit(path, f"pub static {'mut ' if v['is_mutable'] else ''}{path}: {self.ty(v['type'])}")
        elif kind == "type_alias":
            params, where = self.generics(v["generics"])
            self.emit(path, f"pub type {path}{params}{where} = {self.ty(v['type'])}")
        elif kind == "macro":
            self.emit(path, f"pub macro {path}!")
        elif kind == "proc_macro":
            self.emit(path, f"pub proc_macro({v['kind']}) {path}")
        elif kind == "trait_alias":
            self.emit(path, f"pub trait {path} = ..")
        else:
            self.emit(path, f"pub {kind} {path}")
        if full and kind in ("struct", "union", "enum"):
            for impl_id in v["impls"]:
                impl = self.item(impl_id)
                if impl["inner"]["impl"]["trait"] is None:
                    self.inherent(impl, path)
                else:
                    self.trait_impl(impl, path)

    def variant(self, item, enum_path):
        v = item["inner"]["variant"]
        path = f"{enum_path}::{item['name']}"
        kind, sv = (v["kind"], None) if isinstance(v["kind"], str) else next(iter(v["kind"].items()))
        if kind == "tuple":
            fields = [self.ty(self.item(f)["inner"]["struct_field"]) if f is not None else "_"
                      for f in sv]
            body = f"({', '.join(fields)})"
        elif kind == "struct":
            fields = [f"{self.item(f)['name']}: {self.ty(self.item(f)['inner']['struct_field'])}"
                      for f in sv["fields"]]
            if sv["has_stripped_fields"]:
                fields.append("..")
            body = " { " + ", ".join(fields) + " }" if fields else " {}"
        else:
            body = ""
        discriminant = f" = {v['discriminant']['expr']}" if v.get("discriminant") else ""
        self.emit(path, f"{non_exhaustive(item)}pub variant {path}{body}{discriminant}")

    def member(self, item, owner, in_trait=False, context=""):
        kind, v = kind_of(item)
        path = f"{owner}::{item['name']}"
        if kind == "function":
            params, sig = self.signature(v)
            provided = (" (provided)" if v["has_body"] else " (required)") if in_trait else ""
            self.emit(path, f"pub {header(v['header'])}fn {path}{params}{sig}{context}{provided}")
        elif kind == "assoc_const":
            self.emit(path, f"pub const {path}: {self.ty(v['type'])}{context}")
        elif kind == "assoc_type":
            params, where = self.generics(v["generics"])
            bounds = (": " + " + ".join(self.bound(b) for b in v["bounds"])) if v["bounds"] else ""
            default = f" = {self.ty(v['type'])}" if v.get("type") else ""
            self.emit(path, f"pub type {path}{params}{bounds}{where}{default}{context}")
        else:
            self.emit(path, f"pub {kind} {path}{context}")

    def inherent(self, impl, owner):
        v = impl["inner"]["impl"]
        params, where = self.generics(v["generics"])
        context = f" [impl{params} {self.ty(v['for'])}{where}]" if params or where else ""
        for member_id in v["items"]:
            member = self.item(member_id)
            if member is not None and member["visibility"] == "public":
                self.member(member, owner, context=context)

    def trait_impl(self, impl, owner):
        v = impl["inner"]["impl"]
        if v.get("blanket_impl") is not None:
            return  # impl<T: Bound> Trait for T: follows from the other lines
        if self.external(v["trait"].get("id"), v["trait"].get("path")) in UNSTABLE_TRAITS:
            return
        params, where = self.generics(v["generics"])
        flags = "unsafe " if v["is_unsafe"] else ""
        neg = "!" if v["is_negative"] else ""
        line = f"{flags}impl{params} {neg}{self.path(v['trait'])} for {self.ty(v['for'])}{where}"
        self.emit(f"{owner} impl", line)

    def render(self):
        self.walk(self.doc["root"], self.item(self.doc["root"])["name"], frozenset())
        for item_id, paths in self.public.items():
            canonical = self.canonical(item_id)
            for path in paths:
                self.describe(item_id, path, full=path == canonical)
        return sorted(set(self.lines))


# Traits that stable code cannot name or rely on, which the compiler implements by itself (and
# which come and go between toolchains): left out of the list.
UNSTABLE_TRAITS = {"core::marker::Freeze", "core::marker::UnsafeUnpin",
                   "core::marker::StructuralPartialEq"}


def kind_of(item):
    inner = item["inner"]
    if isinstance(inner, str):
        return inner, None
    return next(iter(inner.items()))


def header(h):
    abi = h.get("abi", "Rust")
    if isinstance(abi, dict):
        abi = next(iter(abi))
    return ("const " if h.get("is_const") else "") + ("async " if h.get("is_async") else "") + \
        ("unsafe " if h.get("is_unsafe") else "") + (f'extern "{abi}" ' if abi != "Rust" else "")


def non_exhaustive(item):
    for attr in item.get("attrs", []):
        if attr == "non_exhaustive" or (isinstance(attr, str) and "non_exhaustive" in attr) or \
                (isinstance(attr, dict) and ("non_exhaustive" in attr or
                                             "non_exhaustive" in str(attr.get("other", "")))):
            return "#[non_exhaustive] "
    return ""


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: public_api.py CRATE.json")
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    api = Api(doc)
    name = api.item(doc["root"])["name"]
    lines = api.render()
    print(f"# The public API of the `{name}` crate {doc.get('crate_version') or ''}, "
          f"from its rustdoc JSON (format {doc['format_version']}).")
    print("# Generated by scripts/public-api.sh --update; CI fails when the code differs from it.")
    print("# `{ .. }`: a struct or variant with private fields (its public ones are listed below it).")
    seen = set()
    for _, line in lines:
        if line not in seen:
            seen.add(line)
            print(line)


if __name__ == "__main__":
    main()
