"""Customer recognition: typed identifiers, the identity map, and profile merges.

Channels name a customer by typed identifiers (``{"cookie": "…", "account":
"…"}``). Each type is *known* (it names a person: ``account``,
``email_sha256``) or *anonymous* (it names a browser or device: ``cookie``,
``device``). This package owns, without Ray:

- :class:`IdentityConfig` and :func:`parse_identifiers`: which types exist,
  validated once;
- identity keys (``"cookie:abc"``, hashed to an identity partition) and the
  deterministic id of a profile created from an identifier;
- :class:`IdentityTable`: one identity shard's map ``key → profile id``;
- :func:`plan_link`: what to claim, merge and repoint for one request;
- :func:`merge_profiles`: folding one profile into another.

**Profile ids.** :func:`new_profile_id` is deterministic so that two ingress
replicas racing on the same new identifier create the same profile:

- the configured ``customer_id_type`` (default ``account``): the value itself,
  so ``{"account": "C1"}`` and the plain ``customer_id: "C1"`` of the existing
  API reach one profile;
- any other known type: ``"known-"`` + blake2b-128 hex of the key (no raw
  e-mail hashes or numbers in profile ids);
- anonymous types: ``"anon-"`` + blake2b-128 hex of the key.

**Linking** (:func:`plan_link`). The survivor is the involved profile holding
the best known identifier (earliest type in the config order), else the oldest
one (earliest first-seen identifier), ties broken by profile id; every other
involved profile is absorbed into it. Unmapped identifiers are claimed for the
survivor. *Conflict:* when the survivor would end up with two different values
of one known type (two account numbers, whether both are in the request or one
is already held by an involved profile), the plan is a conflict naming that
type and nothing is claimed or merged: the caller refuses the event or request
with :class:`IdentityConflict` (HTTP 409). A link that grows the survivor
beyond ``max_identifiers`` drops its oldest anonymous identifiers that the
request does not carry; known identifiers are never dropped.

**Merging** (:func:`merge_profiles`), absorbed into survivor:

===================  ==========================================================
counters             bucket lists added, re-compacted by the profile's rules
first/last_seen      min (ignoring unset) / max
``last`` facts       max per key
attributes           keys on one side kept; on both, the survivor's value
                     unless the absorbed profile's last ``profile_update`` is
                     strictly newer. ``total_spend`` adds;
                     ``credit_check_result`` follows the newer credit check.
                     (Profiles keep no per-attribute times; a key deleted on
                     one side survives from the other.)
consents             most restrictive per channel and for ``all``:
                     False beats True beats missing
history              union by ts, an entry on both sides kept once, then the
                     record_contact bounds (HISTORY_MAX, HISTORY_HORIZON_S)
session              the one with the latest event continues. If the other
                     ended more than the session gap before it, that visit is
                     closed (its non-empty cart becomes the abandoned cart if
                     newer); otherwise the visits join: earliest start, latest
                     event, events by ts, carts added per item (the continuing
                     visit's price), pages of the earlier-started visit first
                     (pages carry no times); all bounded like a live session
holdings             union, survivor's order first
seen event ids       union of unexpired entries, newest SEEN_IDS kept, so a
                     retried event sent to either id is still a duplicate
abandoned_cart       the newer
===================  ==========================================================

A merge records ``last["merged:<absorbed id>"] = absorbed.last_seen``; merging
the same absorbed profile again is a no-op unless it has seen events since,
so a retried merge does not double-count.
"""
