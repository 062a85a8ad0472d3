"""Text conditioning: captions true of their clips, the byte tokenizer, the
U-Net's cross-attention and pooled text, and text in condition dropout and
classifier-free guidance."""

import collections
import os
import pickle
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdm.data import digit_captions
from vdm.data import moving_digits
from vdm.diffusion import conditions
from vdm.diffusion import gaussian
from vdm.diffusion import guidance
from vdm.models import attention
from vdm.models import text_embedders
from vdm.models import tokenizer
from vdm.models import unet3d

sys.path.insert(0, os.path.dirname(__file__))
import model_test  # pylint: disable=g-import-not-at-top,wrong-import-position

MAX_LEN = 48


@pytest.fixture(scope='module')
def captioned():
  return {split: moving_digits.generate(split, 400, 20, 32, captions=True)
          for split in ('train', 'test')}


def test_captions_are_true_of_every_clip(captioned):
  for split, out in captioned.items():
    motions = [digit_captions.parse(c.decode()) for c in out['caption']]
    np.testing.assert_array_equal([m.digit for m in motions], out['label'])
    np.testing.assert_array_equal([m.direction for m in motions], out['direction'])
    # The direction measured on the video itself, over the whole video and over
    # 10-frame clips from its start, middle and end (no bounce anywhere).
    for start in (0, 5, 10):
      clip = out['video'][:, start:start + 10]
      np.testing.assert_array_equal(digit_captions.measured_direction(clip), out['direction'],
                                    err_msg=f'{split} clip at frame {start}')
    # Fast videos move about twice as far as slow ones.
    travel = {s: [] for s in range(len(digit_captions.SPEEDS))}
    for v, m in zip(out['video'][..., 0], motions):
      first, last = np.nonzero(v[0] > 64), np.nonzero(v[-1] > 64)  # (rows, columns)
      travel[m.speed].append(np.hypot(*(np.mean(last, 1) - np.mean(first, 1))))
    assert 1.6 < np.median(travel[1]) / np.median(travel[0]) < 2.4


def test_held_out_compositions(captioned):
  def pairs(split):
    return collections.Counter(
        (m.digit, m.direction) for m in map(digit_captions.parse,
                                            (c.decode() for c in captioned[split]['caption'])))
  train, test = pairs('train'), pairs('test')
  assert not any(digit_captions.held_out(*p) for p in train)
  held = sum(n for p, n in test.items() if digit_captions.held_out(*p))
  assert 0.35 < held / sum(test.values()) < 0.65  # Both kinds in the test split.
  # Every digit and every direction is seen in training, in other compositions.
  assert {d for d, _ in train} == set(range(10))
  assert {r for _, r in train} == set(range(len(digit_captions.DIRECTIONS)))


def test_caption_parse_refuses_other_text():
  assert digit_captions.parse('An eight moving left, quickly') == (8, 4, 1)
  with pytest.raises(ValueError, match='not a moving-digits caption'):
    digit_captions.parse('a ten moving left, quickly')


def test_byte_tokenizer_round_trip_and_length_error():
  texts = ['a seven moving up, slowly', '', 'zoom on a caf\u00e9', b'bytes too']
  bytes_tokenizer = tokenizer.Tokenizer('bytes', 32)
  tokens = bytes_tokenizer(texts)
  assert tokens.shape == (4, 32) and tokens.dtype == np.int32
  assert (tokens[1] == tokenizer.PAD).all()  # The empty text is the null text.
  assert bytes_tokenizer.decode(tokens) == ['a seven moving up, slowly', '', 'zoom on a caf\u00e9',
                                            'bytes too']
  with pytest.raises(ValueError, match='text_max_length'):
    bytes_tokenizer(['x' * 33])


def test_word_tokenizer_vocabulary_round_trip_and_unknown_words(capfd):
  vocabulary = tokenizer.build_vocabulary([b'a seven moving up, slowly', 'A one moving left'])
  assert vocabulary == (',', 'a', 'left', 'moving', 'one', 'seven', 'slowly', 'up')
  words = tokenizer.Tokenizer('words', 8, vocabulary)
  assert words.vocab_size == len(vocabulary) + 2
  tokens = words(['a one moving up, slowly', '', 'a nine moving up'])
  assert words.decode(tokens) == ['a one moving up , slowly', '', 'a <unk> moving up']
  assert tokens[2, 1] == tokenizer.UNK and (tokens[1] == tokenizer.PAD).all()
  assert "['nine']" in capfd.readouterr().err  # Said once...
  words(['a nine moving left'])
  assert 'nine' not in capfd.readouterr().err  # ...not at every call.
  with pytest.raises(ValueError, match='text_max_length'):
    words(['a one moving up and to the left, slowly'])
  with pytest.raises(ValueError, match='text_vocabulary'):
    tokenizer.Tokenizer('words', 8)


def _text_model(**overrides):
  cfg = model_test.tiny_config(text_encoder='learned', text_max_length=MAX_LEN, text_width=16,
                               text_layers=1, text_heads=2, **overrides)
  return model_test.randomized(unet3d.UNet3D(cfg, rngs=nnx.Rngs(0)))


def _tokens(*texts):
  return jnp.asarray(tokenizer.Tokenizer('bytes', MAX_LEN)(texts))


def test_cross_attention_ignores_padded_tokens():
  block = model_test.randomized(attention.TextCrossAttention(
      16, 12, 2, 8, norm_groups=4, rngs=nnx.Rngs(0), dtype=jnp.float32,
      attn_dtype=jnp.float32))
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 16))
  text = jax.random.normal(jax.random.key(1), (2, 1, 5, 12))
  mask = jnp.array([[[True, True, False, False, False]], [[True] * 4 + [False]]])
  base = block(x, text, mask)
  garbage = jax.random.normal(jax.random.key(2), text.shape) * 10
  changed = jnp.where(mask[..., None], text, garbage)
  np.testing.assert_allclose(block(x, changed, mask), base, atol=1e-5)
  # A real token does change the output, and a text of padding only is defined.
  assert not np.allclose(block(x, text.at[:, :, 0].add(1.0), mask), base, atol=1e-3)
  assert np.isfinite(block(x, text, jnp.zeros_like(mask))).all()


def test_null_text_is_the_unconditional_branch_of_guidance():
  model = _text_model()
  z = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 3))
  logsnr = jnp.array([-1.0, 2.0])
  text = _tokens('a one moving up, slowly', 'a two moving left, quickly')
  null = model_test.apply(model, z, logsnr, text=jnp.zeros_like(text))
  np.testing.assert_allclose(model_test.apply(model, z, logsnr), null, atol=1e-6)
  np.testing.assert_array_equal(conditions.null({'text': text})['text'], 0)
  cond = model_test.apply(model, z, logsnr, text=text)
  assert not np.allclose(cond, null, atol=1e-3)
  fn = lambda z, logsnr, c: model_test.apply(model, z, logsnr, **conditions.network_kwargs(c))
  w = 2.0
  guided = guidance.classifier_free(fn, {'text': text}, w)(z, logsnr)
  np.testing.assert_allclose(guided, (1 + w) * cond - w * null, atol=1e-4)
  # A different text gives a different video.
  other = model_test.apply(model, z, logsnr, text=_tokens('a one moving up, slowly',
                                                          'a nine moving up, slowly'))
  np.testing.assert_allclose(other[0], cond[0], atol=1e-6)
  assert not np.allclose(other[1], cond[1], atol=1e-3)


def test_per_frame_text_of_appended_images_reaches_only_their_frames():
  model = _text_model()
  nv, ni = 4, 2
  is_image = jnp.array([False] * nv + [True] * ni)
  z = jax.random.normal(jax.random.key(0), (1, nv + ni, 8, 8, 3))
  logsnr = jnp.array([0.5])
  video, image_a, image_b = 'a one moving up, slowly', 'a two moving left, slowly', 'a six'
  texts = _tokens(*([video] * nv + [image_a, image_b]))[None]  # [1, T, L]
  base = model_test.apply(model, z, logsnr, text=texts, is_image=is_image)
  # One caption per video equals that caption repeated on every frame.
  per_video = model_test.apply(model, z[:, :nv], logsnr, text=_tokens(video))
  np.testing.assert_allclose(base[:, :nv], per_video, atol=1e-5)
  out = model_test.apply(model, z, logsnr, text=texts.at[0, nv].set(_tokens('an eight')[0]),
                         is_image=is_image)
  others = [i for i in range(nv + ni) if i != nv]
  np.testing.assert_allclose(out[:, others], base[:, others], atol=1e-5)
  assert not np.allclose(out[:, nv], base[:, nv], atol=1e-3)


def test_text_and_label_drop_together():
  b, t, nv = 512, 4, 3
  is_image = jnp.array([False] * nv + [True] * (t - nv))
  label = jnp.ones((b, t), jnp.int32)
  text = jnp.ones((b, t, 6), jnp.int32)
  out = gaussian.drop_condition(jax.random.key(0), {'label': label, 'text': text}, 0.3,
                                is_image)
  dropped = out['label'] == conditions.NULL_LABEL  # [B, T]
  np.testing.assert_array_equal((out['text'] == 0).all(-1), dropped)
  assert ((out['text'] == 0).any(-1) == dropped).all()  # A caption goes whole or not at all.
  # The video frames share one draw; each image has its own.
  assert (dropped[:, :nv] == dropped[:, :1]).all()
  assert 0.25 < dropped[:, 0].mean() < 0.35 and 0.25 < dropped[:, nv].mean() < 0.35
  assert (dropped[:, nv] != dropped[:, 0]).any()


def test_text_inputs_are_checked():
  model = _text_model()
  z = jnp.zeros((2, 3, 8, 8, 3))
  with pytest.raises(ValueError, match='text must be tokens'):
    model(z, jnp.zeros(2), text=jnp.zeros((2, 10), jnp.int32))
  plain = unet3d.UNet3D(model_test.tiny_config(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='without text conditioning'):
    plain(z, jnp.zeros(2), text=_tokens('a', 'b'))
  with pytest.raises(ValueError, match='text_encoder'):
    model_test.tiny_config(text_encoder='t5')


# --- A frozen encoder's embeddings ('precomputed') ----------------------------------

STAND_IN = 'vdm.models.text_embedders:hashed_words'


def _embed(*texts, length=MAX_LEN):
  return jnp.asarray(tokenizer.Embedder(STAND_IN, length, text_embedders.HASHED_WORDS_WIDTH)(
      texts))


def test_embedder_pads_with_zeros_and_names_the_keys_it_needs():
  a = _embed('a one moving up, slowly', '', 'a one moving up, slowly', length=8)
  assert a.shape == (3, 8, 64) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a[1], 0)  # '' is the null text.
  np.testing.assert_array_equal(a[0], a[2])  # A word's vector is fixed (a hash of it).
  # Five words and a comma: six real tokens, the padding exactly zero.
  np.testing.assert_array_equal(np.any(a[0] != 0, -1), [True] * 6 + [False] * 2)
  # The same word at another place differs by its position code only.
  b = _embed('one a', length=8)
  assert 0 < np.abs(b[0, 0] - a[0, 1]).max() <= 0.2 + 1e-6  # Two codes of amplitude 0.1.
  # Pickles as its name (the input pipeline's worker processes hold it).
  copy = pickle.loads(pickle.dumps(tokenizer.Embedder(STAND_IN, 8, 64)))
  np.testing.assert_array_equal(copy(['a one moving up, slowly']), a[:1])
  with pytest.raises(ValueError, match='text_embed_dim'):
    tokenizer.Embedder(STAND_IN, 8, 32)(['a one'])  # The stand-in's D is 64.
  with pytest.raises(ValueError, match='text_max_length'):
    tokenizer.Embedder(STAND_IN, 2, 64)(['a one moving'])
  with pytest.raises(ValueError, match="'package.module:function'"):
    tokenizer.Embedder('hashed_words', 8, 64)(['a'])
  with pytest.raises(ValueError, match='cannot be loaded'):
    tokenizer.Embedder('vdm.models.text_embedders:t5', 8, 64)(['a'])
  with pytest.raises(ValueError, match='text_embedder'):
    model_test.tiny_config(text_encoder='precomputed', text_embed_dim=64)


def _embedding_model():
  cfg = model_test.tiny_config(text_encoder='precomputed', text_embedder=STAND_IN,
                               text_embed_dim=64, text_max_length=MAX_LEN, text_width=16)
  return model_test.randomized(unet3d.UNet3D(cfg, rngs=nnx.Rngs(0)))


def test_precomputed_embeddings_condition_guide_and_drop_like_tokens():
  model = _embedding_model()
  z = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 3))
  logsnr = jnp.array([-1.0, 2.0])
  text = _embed('a one moving up, slowly', 'a two moving left, quickly')  # [2, L, 64]
  null = model_test.apply(model, z, logsnr, text=jnp.zeros_like(text))
  np.testing.assert_allclose(model_test.apply(model, z, logsnr), null, atol=1e-6)
  np.testing.assert_array_equal(conditions.null({'text': text})['text'], 0)
  assert conditions.frames_shape({'text': text}) == (2,)
  assert conditions.as_int({'text': text})['text'].dtype == jnp.float32
  cond = model_test.apply(model, z, logsnr, text=text)
  assert not np.allclose(cond, null, atol=1e-3)
  fn = lambda z, logsnr, c: model_test.apply(model, z, logsnr, **conditions.network_kwargs(c))
  guided = guidance.classifier_free(fn, {'text': text}, 2.0)(z, logsnr)
  np.testing.assert_allclose(guided, 3.0 * cond - 2.0 * null, atol=1e-4)
  # Per frame [B, T, L, D]: the caption repeated on every frame is the caption.
  per_frame = jnp.repeat(text[:, None], 3, axis=1)
  np.testing.assert_allclose(model_test.apply(model, z, logsnr, text=per_frame), cond,
                             atol=1e-5)
  # Condition dropout nulls whole captions, per frame.
  out = gaussian.drop_condition(jax.random.key(0), {'text': jnp.repeat(
      per_frame, 64, axis=0)}, 0.5, jnp.zeros(3, bool))['text']  # [128, 3, L, D]
  dropped = (out == 0).all((-1, -2))
  assert ((out == 0).all(-1).any(-1) | ~dropped).all() and 0.3 < dropped.mean() < 0.7
  with pytest.raises(ValueError, match='text must be embeddings'):
    model(z, logsnr, text=_tokens('a', 'b'))


# --- Training and sampling with text, every method ------------------------------

@pytest.fixture(scope='module')
def text_data(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  moving_digits.prepare(path, 'captions_32', num_train=32, num_test=8, verbose=False)
  return path


def _config(data_dir, method='text'):
  from configs import tiny, videofusion_tiny  # pylint: disable=g-import-not-at-top
  config = (tiny.with_text(videofusion_tiny.get_config()) if method == 'videofusion'
            else tiny.with_text(tiny.get_config(method)))
  if method == 'videofusion':  # A one-level residual, as the base: compiles in half the time.
    config.videofusion.update(residual_channel_mult=(1,), residual_attention_resolutions=(8,))
  config.data.data_dir = data_dir
  config.sharding.mesh = (('data', 1), ('fsdp', 1))  # One of the session's 8 CPU devices.
  return config


def _params(state):
  return jax.tree.leaves((state.params, state.opt_state))


@pytest.mark.slow
def test_text_run_resumes_exactly_and_samples_prompts(tmp_path, text_data, capfd):
  from vdm.sampling import sample_lib  # pylint: disable=g-import-not-at-top
  from vdm.train import train_lib  # pylint: disable=g-import-not-at-top
  config = _config(text_data)
  config.training.num_samples = 2
  full = train_lib.train(config, str(tmp_path / 'full'))
  with np.load(tmp_path / 'full' / 'samples' / 'step_4.npz') as f:  # The test split's captions.
    assert [digit_captions.parse(c) for c in f['captions']]
  # The run as a crash after step 2 would have left it, resumed to step 4.
  shutil.copytree(tmp_path / 'full', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '4')
  config.training.num_samples = 0  # Changes no state; spares two sampler compiles.
  resumed = train_lib.train(config, str(tmp_path / 'resumed'))
  assert 'Resumed from step 2' in capfd.readouterr().err
  for a, b in zip(_params(full), _params(resumed)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  def sample(*prompts):
    return sample_lib.sample(str(tmp_path / 'full'), str(tmp_path / 'out'),
                             sample_lib.SampleRequest(num_samples=3, prompts=prompts),
                             {'sampling.guidance_weight': 2.0}, progress=False)
  out = sample('a three moving right, quickly', '')
  assert out.captions == ['a three moving right, quickly', '', 'a three moving right, quickly']
  assert out.videos.shape == (3, 4, 8, 8, 1)
  with np.load(tmp_path / 'out' / 'samples.npz') as f:
    assert list(f['captions']) == out.captions
  # Sample i's video depends on its own prompt only (its noise on the seed and i).
  other = sample('a three moving right, quickly', 'a nine moving up, slowly')
  np.testing.assert_array_equal(other.videos[0::2], out.videos[0::2])
  assert not np.array_equal(other.videos[1], out.videos[1])


def test_prompts_are_checked_before_anything_loads(tmp_path, text_data, no_restore):
  from vdm import config_lib  # pylint: disable=g-import-not-at-top
  from vdm.sampling import sample_lib  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  (tmp_path / 'text').mkdir()
  (tmp_path / 'plain').mkdir()
  from vdm.train import train_lib  # pylint: disable=g-import-not-at-top
  # As training writes it: with the words of the captions.
  config_lib.save_config(train_lib.resolve_text_vocabulary(_config(text_data)),
                         str(tmp_path / 'text'))
  config_lib.save_config(tiny.get_config(), str(tmp_path / 'plain'))
  request = lambda *p: sample_lib.SampleRequest(num_samples=2, prompts=p)
  with pytest.raises(ValueError, match='no text conditioning'):
    sample_lib.sample(str(tmp_path / 'plain'), None, request('a one'))
  with pytest.raises(ValueError, match='text_max_length'):
    sample_lib.sample(str(tmp_path / 'text'), None, request('a one moving ' + 'up ' * 20))
  with pytest.raises(ValueError, match='no prompt'):
    sample_lib.sample(str(tmp_path / 'text'), None, request())


@pytest.mark.slow
@pytest.mark.parametrize('method', ['videofusion', 'trip'])
def test_each_method_takes_text_in_its_train_step_and_denoiser(method, text_data):
  from vdm import sharding  # pylint: disable=g-import-not-at-top
  from vdm.data import pipeline  # pylint: disable=g-import-not-at-top
  from vdm.train import train_lib  # pylint: disable=g-import-not-at-top
  config = _config(text_data, method)
  trainer = train_lib.Trainer(config)
  state = trainer.init_state()
  batches = pipeline.make_train_iterator(config, process_index=0, process_count=1)
  local = next(batches)
  batches.close()
  assert local['text'].shape[:2] == local['video'].shape[:2]  # A caption per frame.
  batch = sharding.global_batch(local, trainer.mesh)
  # The train step traces with text (each method trains for real without text
  # in its command-line test, and the plain method with text above).
  _, metrics = jax.eval_shape(trainer.train_step, state, batch)
  assert metrics['loss'].shape == ()
  # The text reaches the denoiser: one caption changed, one video's output changed.
  # Noise on every weight: the zero-initialised output layers output 0
  # whatever the text.
  networks = model_test.randomized(nnx.merge(trainer.graphdef, state.params))
  z = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 1))
  first = {'first_frame': z[:, 0]} if method == 'trip' else None
  fn = jax.jit(trainer.method.denoiser(networks, first))  # One compile, not op by op.
  logsnr = jnp.zeros(2)
  texts = ('a one moving up, slowly', 'a nine moving left, quickly')
  words = tokenizer.from_config(config)  # Its vocabulary: the tiny train split's words.
  a = fn(z, logsnr, conditions.make(None, jnp.asarray(words([texts[0], texts[0]]))))
  b = fn(z, logsnr, conditions.make(None, jnp.asarray(words(texts))))
  np.testing.assert_allclose(a[0], b[0], atol=1e-6)
  assert not np.allclose(a[1], b[1], atol=1e-6)
  # Sampling needs nothing more of a method than this denoiser: the samplers take
  # its conditions as they come (sampling with text: test_text_run_resumes_...).


def test_text_alignment_is_high_on_real_clips_and_near_chance_on_shuffled_captions(captioned):
  from vdm.evaluation import digits, text_alignment  # pylint: disable=g-import-not-at-top
  train, test = captioned['train'], captioned['test']
  clf = digits.fit(train['video'][:, ::10], train['label'], test['video'][:64], test['label'][:64],
                   moving_digits.digit_size(32))
  videos = test['video'][:, 5:15]  # 10-frame clips
  predicted, directions = clf.predict(videos), digit_captions.measured_direction(videos)
  real = text_alignment.scores(predicted, directions, test['caption'])
  assert real['count_seen'] + real['count_held_out'] == real['count_all'] == len(videos)
  for subset in ('seen', 'held_out'):
    assert real[f'digit_accuracy_{subset}'] > 0.85
    assert real[f'direction_accuracy_{subset}'] == 1.0
  shuffled = text_alignment.scores(predicted, directions,
                                   np.random.default_rng(0).permutation(test['caption']))
  assert shuffled['digit_accuracy_all'] < 0.25 and shuffled['direction_accuracy_all'] < 0.3
