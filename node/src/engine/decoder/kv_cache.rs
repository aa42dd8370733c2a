//! One sequence's keys and values, per layer, on the model's device. The cache holds
//! exactly the tokens the sequence has run (no reservation up to the context length), so
//! its memory follows the tokens actually generated; it is never read back to the host.

use burn::prelude::*;

/// Keys and values of every layer for one sequence.
#[derive(Debug, Default)]
pub(crate) struct KvCache {
    /// Per layer, `[1, kv_heads, tokens, head_dim]` keys and values.
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    tokens: usize,
    /// Bytes of one token's keys and values across all layers.
    token_bytes: usize,
}

impl KvCache {
    pub(crate) fn new(layers: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| None).collect(),
            tokens: 0,
            token_bytes: 2 * layers * kv_heads * head_dim * std::mem::size_of::<f32>(),
        }
    }

    /// Tokens whose keys and values are held.
    pub(crate) fn len(&self) -> usize {
        self.tokens
    }

    /// Bytes the cache holds on its device.
    pub(crate) fn bytes(&self) -> usize {
        self.tokens.saturating_mul(self.token_bytes)
    }

    /// Adds `new` tokens' keys and values (`[1, kv_heads, new, head_dim]`) to `layer` and
    /// returns all of that layer's, old and new. The last layer's append commits the
    /// tokens to [`KvCache::len`].
    pub(crate) fn append(
        &mut self,
        layer: usize,
        keys: Tensor<4>,
        values: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let new = keys.dims()[2];
        let slot = &mut self.layers[layer];
        let (k, v) = match slot.take() {
            Some((k, v)) => (
                Tensor::cat(vec![k, keys], 2),
                Tensor::cat(vec![v, values], 2),
            ),
            None => (keys, values),
        };
        *slot = Some((k.clone(), v.clone()));
        if layer + 1 == self.layers.len() {
            self.tokens += new;
        }
        (k, v)
    }
}
