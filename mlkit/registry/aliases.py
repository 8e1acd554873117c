"""Aliases: promote a version, roll back, and the rollback policy the guard follows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlkit._contract import REGISTRY_FILE
from mlkit._io import now_iso, write_json
from mlkit.errors import (
    CheckFailedError,
    ParameterError,
    PromotionBlockedError,
    StateError,
)
from mlkit.registry.cards import log_wandb_artifact
from mlkit.registry.promotion import gate
from mlkit.registry.store import DEFAULT_ALIAS, _locked, _read, _version_number, check_alias


def _alias_stack(events: list[dict[str, Any]]) -> list[int]:
    """Replay an alias's moves: promote pushes a version, rollback pops back to the previous."""
    stack: list[int] = []
    for event in events:
        if event["action"] == "promote":
            stack.append(event["to"])
        elif event["action"] == "rollback" and stack:
            stack.pop()
    return stack


def promote(
    name: str,
    version: str | int,
    alias: str = DEFAULT_ALIAS,
    *,
    force: bool = False,
    reason: str | None = None,
    by: str | None = None,
    details: dict[str, Any] | None = None,
    root: Path | None = None,
    tracking: str | None = None,
) -> dict[str, Any]:
    """Point ``alias`` at ``version``; the move is kept in the alias history for rollback.

    When the model has bounds (:func:`set_bounds`), the version's run's newest completed
    evaluation must meet them (:func:`gate`), or the promotion is refused with
    :class:`PromotionBlockedError` and nothing is written. ``force=True`` with a non-empty
    ``reason`` promotes anyway; the history event then keeps ``forced``, ``reason``, the
    ``violations`` and the ``evaluation`` id. Promoting the version the alias already points
    at changes nothing. ``by`` (who moved it: ``retrain``) and ``details`` (more fields, such
    as the ``parent`` version or the ``comparison`` that decided) are kept in the event too.

    Returns:
        ``{"name", "alias", "version", "previous"}``, plus ``forced`` and ``violations`` when
        the gate was overridden.
    """
    check_alias(alias)
    reason = (reason or "").strip() or None
    if force and not reason:
        raise ParameterError(
            "A forced promotion needs a reason, kept in the alias history. Pass --force "
            '--reason "why this model ships despite its bounds".'
        )
    _version_number(version, _read(name, root))  # fail before the lock creates anything
    event: dict[str, Any] = {}
    with _locked(name, root) as folder:
        reg = _read(name, root)
        number = _version_number(version, reg)
        previous = reg["aliases"].get(alias)
        if previous != number:
            checked = gate(name, number, root=root, reg=reg)
            violations = checked["violations"]
            if violations and not force:
                source = (
                    f"its evaluation {checked['evaluation']} of run {checked['run_id']}"
                    if checked["evaluation"]
                    else f"its run {checked['run_id']}"
                )
                raise PromotionBlockedError(
                    f"Refused to promote {name} v{number} to {alias!r}: {source} does not meet "
                    f"the model's bounds:\n"
                    + "".join(f"  - {v}\n" for v in violations)
                    + "Pass --force --reason TEXT to promote anyway.",
                    violations,
                )
            event = {"action": "promote", "from": previous, "to": number, "at": now_iso()}
            if checked["bounds"]:
                event["evaluation"] = checked["evaluation"]
            if violations:
                event.update(forced=True, reason=reason, violations=violations)
            elif reason:
                event["reason"] = reason
            event.update({**(details or {}), **({"by": by} if by else {})})
            reg["aliases"][alias] = number
            reg["alias_history"].setdefault(alias, []).append(event)
            write_json(folder / REGISTRY_FILE, reg)
    if previous != number:
        log_wandb_artifact(
            name,
            number,
            folder / f"v{number}",
            aliases=(alias,),
            job_type="promote",
            tracking=tracking,
            metadata={k: v for k, v in event.items() if k != "action"} if event else None,
        )
    out = {"name": name, "alias": alias, "version": number, "previous": previous}
    if event.get("forced"):
        out.update(forced=True, violations=event["violations"])
    return out


def rollback(
    name: str,
    alias: str = DEFAULT_ALIAS,
    *,
    expect: int | None = None,
    reason: str | None = None,
    by: str | None = None,
    root: Path | None = None,
    tracking: str | None = None,
) -> dict[str, Any]:
    """Move ``alias`` back to the version it pointed at before its last promotion.

    Repeated rollbacks walk further back. Atomic: registry.json is replaced in one rename, so
    a server or reader sees the old alias or the new one. ``expect`` makes the move
    conditional: when the alias no longer points at that version (someone promoted or rolled
    back meanwhile), nothing moves and :class:`~mlkit.errors.CheckFailedError` says so.
    ``reason`` and ``by`` (who decided: ``guard`` for the automatic policy) are kept in the
    alias history.
    """
    check_alias(alias)
    _read(name, root)  # fail before the lock creates anything
    with _locked(name, root) as folder:
        reg = _read(name, root)
        if alias not in reg["aliases"]:
            raise StateError(
                f"Model {name!r} has no alias {alias!r}. Aliases: "
                f"{', '.join(reg['aliases']) or '(none)'}. Promote a version first: mlkit model "
                f"promote {name} VERSION --alias {alias}"
            )
        events = reg["alias_history"].setdefault(alias, [])
        stack = _alias_stack(events)
        if len(stack) < 2:
            raise StateError(
                f"Alias {alias!r} of model {name!r} has no earlier version to roll back to (it "
                f"points at v{reg['aliases'][alias]}). Promote the version you want instead."
            )
        current, target = stack[-1], stack[-2]
        if expect is not None and reg["aliases"][alias] != expect:
            raise CheckFailedError(
                f"{name}:{alias} points at v{reg['aliases'][alias]} now, not v{expect}: it moved "
                "since the decision to roll back, so nothing was changed. Check again."
            )
        event = {"action": "rollback", "from": current, "to": target, "at": now_iso()}
        event.update({k: v for k, v in (("reason", reason), ("by", by)) if v})
        reg["aliases"][alias] = target
        events.append(event)
        write_json(folder / REGISTRY_FILE, reg)
    log_wandb_artifact(
        name,
        target,
        folder / f"v{target}",
        aliases=(alias,),
        job_type="rollback",
        tracking=tracking,
        metadata={k: v for k, v in event.items() if k != "action"},
    )
    return {"name": name, "alias": alias, "version": target, "previous": current}


def get_policy(name: str, alias: str = DEFAULT_ALIAS, root: Path | None = None) -> dict[str, Any]:
    """The rollback policy values set for ``alias`` (:mod:`mlkit.guard` fills in defaults)."""
    return dict((_read(name, root).get("policy") or {}).get(alias) or {})


def set_policy(
    name: str,
    alias: str,
    values: dict[str, Any],
    *,
    clear: bool = False,
    root: Path | None = None,
) -> dict[str, Any]:
    """Store rollback policy values for ``alias`` (validated by :mod:`mlkit.guard`)."""
    check_alias(alias)
    _read(name, root)
    with _locked(name, root) as folder:
        reg = _read(name, root)
        policies = reg.setdefault("policy", {})
        current = {} if clear else dict(policies.get(alias) or {})
        current.update(values)
        policies[alias] = current
        write_json(folder / REGISTRY_FILE, reg)
    return current


def record_refusal(
    name: str,
    version: str | int,
    alias: str = DEFAULT_ALIAS,
    *,
    reason: str,
    by: str | None = None,
    details: dict[str, Any] | None = None,
    root: Path | None = None,
) -> dict[str, Any]:
    """Keep a promotion that was refused in ``alias``'s history; the alias does not move.

    The event's action is ``refused``: rollback and :func:`alias_since` replay only the moves
    (promote, rollback), so a refusal is there to read, never to follow.

    Returns:
        The event as written.
    """
    check_alias(alias)
    _version_number(version, _read(name, root))  # fail before the lock creates anything
    with _locked(name, root) as folder:
        reg = _read(name, root)
        event: dict[str, Any] = {
            "action": "refused",
            "from": reg["aliases"].get(alias),
            "to": _version_number(version, reg),
            "at": now_iso(),
            "reason": reason,
            **(details or {}),
        }
        if by:
            event["by"] = by
        reg["alias_history"].setdefault(alias, []).append(event)
        write_json(folder / REGISTRY_FILE, reg)
    return event


def alias_since(name: str, alias: str = DEFAULT_ALIAS, root: Path | None = None) -> str | None:
    """When ``alias`` last moved to the version it points at now (ISO time), None if never."""
    reg = _read(name, root)
    current = reg["aliases"].get(alias)
    for event in reversed(reg["alias_history"].get(alias) or []):
        if event.get("action") in ("promote", "rollback") and event.get("to") == current:
            return event.get("at")
    return None
