"""Environments: the held-out split never reaches optimisation; OUT probes avoid the subject."""

from odedit.config import ODEditConfig
from odedit.environments import build_environments, request_hash


def test_heldout_probes_never_in_training_environments(world, world_requests):
    root, requests = world_requests
    for req in requests:
        pool = world.locality_pool(64, req.subject, seed=0)
        es = build_environments(req, root, ODEditConfig(), pool)
        kinds = {e.kind for e in es.train}
        assert kinds == {"IN", "SE", "OUT"}
        train_prompts = {s.prompt for e in es.train if e.kind != "IN" for s in e.samples}
        held = set(req.rephrase) | set(req.loc) | set(req.m_loc_q)
        assert not (train_prompts & held) - {req.src}
        for e in es.train:
            if e.kind == "OUT":
                assert all(req.subject not in s.prompt.split() for s in e.samples)
        held_images = [s.image.tobytes() for s in es.heldout.m_gen]
        se_images = [s.image.tobytes() for e in es.train if e.kind == "SE" for s in e.samples]
        assert not set(held_images) & set(se_images)


def test_request_hash_stable_and_ignores_audit_fields(world_requests):
    _, requests = world_requests
    r = requests[0]
    assert request_hash(r) == request_hash(r.model_copy(update={"requester": "someone else", "id": "x"}))
    assert request_hash(r) != request_hash(r.model_copy(update={"alt": r.alt + "x"}))


# ---------------------------------------------------------------- no leaks, proven
import shutil  # noqa: E402

from PIL import Image  # noqa: E402

from odedit.environments import image_hash, load_image, norm_text  # noqa: E402
from odedit.models.adapter import Sample  # noqa: E402


def _copy_as_png(path, root, dest):
    """The same picture under another name and format: only a CONTENT hash can catch it."""
    load_image(path, root).save(dest)
    return str(dest)


def _leaky(req, root, tmp_path):
    """A request whose SE material repeats held-out probes (renamed image copies, re-cased text)."""
    copies = [_copy_as_png(p, root, tmp_path / f"{req.id}-copy{i}.png") for i, p in enumerate(req.image_rephrase)]
    return req.model_copy(update={
        "train_rephrase": list(req.train_rephrase) + [q.upper() + "  " for q in req.rephrase],
        "train_image_rephrase": list(req.train_image_rephrase) + copies})


def _assert_no_leak(req, root, es):
    held_text = {norm_text(t) for t in list(req.rephrase) + list(req.loc) + list(req.m_loc_q)} - {norm_text(req.src)}
    held_img = {image_hash(load_image(p, root)) for p in list(req.image_rephrase) + list(req.m_loc)}
    edit_img = image_hash(load_image(req.image, root))
    assert held_img and held_text
    for env in es.train:
        for s in env.samples:
            assert norm_text(s.prompt) not in held_text, (env.name, s.prompt)
            assert image_hash(s.image) not in held_img, env.name
            if env.kind == "OUT":
                assert not (s.image is None and norm_text(s.prompt) == norm_text(req.src)), "edit prompt in OUT"
                assert image_hash(s.image) != edit_img, "edit image in OUT"
                if req.subject:
                    assert req.subject.lower() not in s.prompt.lower().split()


def _poisoned_pool(pool, req, root):
    """A pool that offers every held-out probe and the edit's own prompt/image: all must go."""
    img = load_image(req.image, root)
    return (list(pool) + [Sample(q, a) for q, a in zip(req.loc, req.loc_ans)]
            + [Sample(q, a, load_image(p, root)) for p, q, a in zip(req.m_loc, req.m_loc_q, req.m_loc_a)]
            + [Sample(req.src, req.alt), Sample(req.src, req.alt, img), Sample("what is shown?", "x", img)]
            + [Sample("what is shown?", "x", load_image(p, root)) for p in req.image_rephrase])


def test_no_heldout_content_in_training_embedded_model(world, world_requests, tmp_path):
    root, requests = world_requests
    for req in requests[:4]:
        leaky = _leaky(req, root, tmp_path)
        pool = _poisoned_pool(world.locality_pool(64, req.subject, seed=0), req, root)
        es = build_environments(leaky, root, ODEditConfig(), pool)
        _assert_no_leak(req, root, es)
        assert {e.kind for e in es.train} == {"IN", "SE", "OUT"}
        # the renamed copies were dropped by content, the genuine train images kept
        se_img = es.env("SE/image").samples
        assert len(se_img) == len(req.train_image_rephrase) + ODEditConfig().n_image_aug


def test_no_heldout_content_in_training_non_world_checkpoint(embedded_dir, world_requests, tmp_path):
    from odedit.models.adapter import MLLMAdapter
    from odedit.pools import locality_pool_for, world_of

    model = tmp_path / "ckpt"
    shutil.copytree(embedded_dir, model, ignore=shutil.ignore_patterns("train_report.json"))
    assert world_of(model) is None
    adapter = MLLMAdapter.load(model, device="cpu")
    root, requests = world_requests
    batch = list(requests[:4])
    pool_for = locality_pool_for(adapter, model, batch, root)
    assert callable(pool_for)
    for req in batch:
        pool = pool_for(req)
        own = image_hash(load_image(req.image, root))
        assert len(pool) >= 1 and all(image_hash(s.image) != own for s in pool)  # own probe excluded
        es = build_environments(_leaky(req, root, tmp_path), root, ODEditConfig(), _poisoned_pool(pool, req, root))
        _assert_no_leak(req, root, es)
