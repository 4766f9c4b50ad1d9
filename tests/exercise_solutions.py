"""Reference solutions of the nine exercises, written with nbgrader markers, shared by the tests that build
synthetic teacher notebooks (tests/test_grading.py, tests/test_assignments.py)."""

# (exercise, solution cell with markers)
EXERCISES = [
    ("patchify", '''def patchify(images, patch_size):
    ### BEGIN SOLUTION
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)
    ### END SOLUTION'''),
    ("patch_embedding", '''class PatchEmbedding(nn.Module):
    def __init__(self, image_size, patch_size, in_channels, dim):
        super().__init__()
        ### BEGIN SOLUTION
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        ### END SOLUTION

    def forward(self, x):
        ### BEGIN SOLUTION
        return rearrange(self.proj(x), "b d h w -> b (h w) d")
        ### END SOLUTION'''),
    ("cls_and_pos", '''def add_cls_and_pos(tokens, cls_token, pos_embed):
    ### BEGIN SOLUTION
    return torch.cat([cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + pos_embed
    ### END SOLUTION'''),
    ("attention", '''def attention(q, k, v):
    ### BEGIN SOLUTION
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    return weights @ v, weights
    ### END SOLUTION'''),
    ("multi_head_attention", '''class MultiHeadAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        ### BEGIN SOLUTION
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        ### END SOLUTION

    def forward(self, x):
        ### BEGIN SOLUTION
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out, _ = attention(q, k, v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))
        ### END SOLUTION'''),
    ("mlp", '''class MLP(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        ### BEGIN SOLUTION
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        ### END SOLUTION

    def forward(self, x):
        ### BEGIN SOLUTION
        return self.fc2(F.gelu(self.fc1(x)))
        ### END SOLUTION'''),
    ("encoder_block", '''class EncoderBlock(nn.Module):
    def __init__(self, dim, heads, mlp_dim):
        super().__init__()
        ### BEGIN SOLUTION
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), MultiHeadAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), MLP(dim, mlp_dim)
        ### END SOLUTION

    def forward(self, x):
        ### BEGIN SOLUTION
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
        ### END SOLUTION'''),
    ("vit_forward", '''def vit_forward(model, images):
    ### BEGIN SOLUTION
    x = add_cls_and_pos(model.patch_embed(images), model.cls_token, model.pos_embed)
    for blk in model.blocks:
        x = blk(x)
    return model.head(model.norm(x)[:, 0])
    ### END SOLUTION'''),
    ("rollout", '''def attention_rollout(attentions):
    ### BEGIN SOLUTION
    result = None
    for attn in attentions:
        a = attn.mean(dim=1) + torch.eye(attn.shape[-1])
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result
    ### END SOLUTION'''),
]
