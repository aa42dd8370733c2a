//! One sequence's keys and values, per layer. The cache holds the tokens the sequence
//! has run (no reservation up to the context length), so its memory follows the tokens
//! actually generated; it is never read back to the host.
//!
//! On the CPU it lives in host memory, token after token, and each step writes its new
//! tokens in place at the end (amortised growth, no copy of what is already there);
//! with a sliding window, tokens no query can see any more are dropped. On a device it is
//! a pair of tensors per layer, grown by concatenation.

use burn::prelude::*;

/// Keys and values of every layer for one sequence.
#[derive(Debug)]
pub(crate) struct KvCache {
    layers: Layers,
    /// Tokens run so far (positions `0..tokens`), whether or not all are still held.
    tokens: usize,
    /// Bytes of one token's keys and values across all layers.
    token_bytes: usize,
}

#[derive(Debug)]
enum Layers {
    /// Per layer, `[1, kv_heads, tokens, head_dim]` keys and values.
    Device(Vec<Option<(Tensor<4>, Tensor<4>)>>),
    Host(Vec<HostLayer>),
}

/// One layer's keys and values in host memory: `[tokens held, kv_heads * head_dim]`
/// each, row after row, starting at position `first`.
#[derive(Debug, Default)]
pub(super) struct HostLayer {
    keys: Vec<f32>,
    values: Vec<f32>,
    first: usize,
    /// Floats per token: `kv_heads * head_dim`.
    width: usize,
}

impl HostLayer {
    /// The position of the oldest token held.
    pub(super) fn first(&self) -> usize {
        self.first
    }

    /// Keys of the tokens from position `from` on, `width` floats each.
    pub(super) fn keys_from(&self, from: usize) -> &[f32] {
        &self.keys[(from - self.first) * self.width..]
    }

    /// Values of the tokens from position `from` on.
    pub(super) fn values_from(&self, from: usize) -> &[f32] {
        &self.values[(from - self.first) * self.width..]
    }

    /// Adds one token's keys and values (`width` floats each) at the end.
    pub(super) fn push(&mut self, keys: &[f32], values: &[f32]) {
        self.keys.extend_from_slice(keys);
        self.values.extend_from_slice(values);
    }

    /// Drops the tokens before position `keep_from`, once there are `at_least` of them
    /// (so the copy of what stays is paid once per `at_least` tokens, not per step).
    fn trim(&mut self, keep_from: usize, at_least: usize) {
        if keep_from > self.first && keep_from - self.first >= at_least.max(1) {
            let drop = (keep_from - self.first) * self.width;
            self.keys.drain(..drop);
            self.values.drain(..drop);
            self.first = keep_from;
        }
    }
}

impl KvCache {
    /// An empty cache whose layers are device tensors of `float_bytes` a value (4 at
    /// f32, 2 at f16).
    pub(crate) fn new(layers: usize, kv_heads: usize, head_dim: usize, float_bytes: usize) -> Self {
        Self {
            layers: Layers::Device((0..layers).map(|_| None).collect()),
            tokens: 0,
            token_bytes: 2 * layers * kv_heads * head_dim * float_bytes,
        }
    }

    /// An empty cache in host memory.
    pub(crate) fn new_host(layers: usize, kv_heads: usize, head_dim: usize) -> Self {
        let width = kv_heads * head_dim;
        Self {
            layers: Layers::Host(
                (0..layers)
                    .map(|_| HostLayer {
                        width,
                        ..HostLayer::default()
                    })
                    .collect(),
            ),
            tokens: 0,
            token_bytes: 2 * layers * width * std::mem::size_of::<f32>(),
        }
    }

    /// Tokens whose keys and values have been computed: the sequence's length so far.
    pub(crate) fn len(&self) -> usize {
        self.tokens
    }

    /// Bytes of the keys and values held.
    pub(crate) fn bytes(&self) -> usize {
        let held = match &self.layers {
            Layers::Host(layers) => self.tokens - layers.first().map_or(0, |l| l.first),
            Layers::Device(_) => self.tokens,
        };
        held.saturating_mul(self.token_bytes)
    }

    /// Adds `new` tokens' keys and values (`[1, kv_heads, new, head_dim]`) to `layer` and
    /// returns all of that layer's, old and new. The last layer's append commits the
    /// tokens to [`KvCache::len`].
    pub(super) fn append(
        &mut self,
        layer: usize,
        keys: Tensor<4>,
        values: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let Layers::Device(layers) = &mut self.layers else {
            unreachable!("a host cache is only handed to the host decoder")
        };
        let new = keys.dims()[2];
        let last = layer + 1 == layers.len();
        let slot = &mut layers[layer];
        let (k, v) = match slot.take() {
            Some((k, v)) => (
                Tensor::cat(vec![k, keys], 2),
                Tensor::cat(vec![v, values], 2),
            ),
            None => (keys, values),
        };
        *slot = Some((k.clone(), v.clone()));
        if last {
            self.tokens += new;
        }
        (k, v)
    }

    /// The host layers, for the host decoder to write a step's tokens into.
    pub(super) fn host_layers(&mut self) -> &mut [HostLayer] {
        match &mut self.layers {
            Layers::Host(layers) => layers,
            Layers::Device(_) => {
                unreachable!("a device cache is only handed to the device decoder")
            }
        }
    }

    /// One host layer, to read.
    pub(super) fn host_layer(&self, index: usize) -> &HostLayer {
        match &self.layers {
            Layers::Host(layers) => &layers[index],
            Layers::Device(_) => {
                unreachable!("a device cache is only handed to the device decoder")
            }
        }
    }

    /// Counts `new` tokens in after every host layer took them, and with a sliding
    /// `window` drops what the next token's query can no longer see.
    pub(super) fn commit_host(&mut self, new: usize, window: Option<usize>) {
        self.tokens += new;
        if let (Some(window), Layers::Host(layers)) = (window, &mut self.layers) {
            // The next query, at position `tokens`, sees keys after `tokens - window`.
            let keep_from = (self.tokens + 1).saturating_sub(window);
            for layer in layers {
                layer.trim(keep_from, window);
            }
        }
    }
}
