"""Reference solutions of the exercises, written with nbgrader markers, shared by the tests that build
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
        if dim % heads != 0:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
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
        a = attn.mean(dim=1) + torch.eye(attn.shape[-1], device=attn.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result
    ### END SOLUTION'''),
    ("param_count", '''def vit_param_count(image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes):
    ### BEGIN SOLUTION
    if image_size % patch_size != 0:
        raise ValueError(f"patch_size {patch_size} does not divide image_size {image_size}")
    n = (image_size // patch_size) ** 2
    embedding = patch_size * patch_size * in_channels * dim + dim + dim + (n + 1) * dim
    block = 2 * dim + 3 * dim * dim + 3 * dim + dim * dim + dim + 2 * dim + 2 * dim * mlp_dim + mlp_dim + dim
    return embedding + depth * block + 2 * dim + dim * num_classes + num_classes
    ### END SOLUTION'''),
    ("sincos_2d", '''def sincos_2d(grid_h, grid_w, dim):
    ### BEGIN SOLUTION
    if dim % 4 != 0:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    k = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(k, dtype=torch.float64) / k)
    r, c = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                          indexing="ij")
    r, c = r.reshape(-1, 1) * omega, c.reshape(-1, 1) * omega
    return torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], dim=1).float()
    ### END SOLUTION'''),
    ("layer_norm", '''def layer_norm(x, weight, bias, eps):
    ### BEGIN SOLUTION
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias
    ### END SOLUTION'''),
    ("lr_schedule", '''def warmup_cosine_lr(step, total_steps, warmup_steps, base_lr):
    ### BEGIN SOLUTION
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
    ### END SOLUTION'''),
    ("train_step", '''def train_step(model, images, labels, optimizer):
    ### BEGIN SOLUTION
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()
    ### END SOLUTION'''),
    ("mean_attention_distance", '''def mean_attention_distance(attn, grid_size, patch_size):
    ### BEGIN SOLUTION
    gh, gw = grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    centres = (torch.stack([rows.flatten(), cols.flatten()], dim=1).to(attn.device, attn.dtype) + 0.5) * patch_size
    dist = (centres[:, None, :] - centres[None, :, :]).norm(dim=-1)
    a = attn[:, :, 1:, 1:]
    a = a / a.sum(dim=-1, keepdim=True)
    return (a * dist).sum(dim=-1).mean(dim=(0, 2))
    ### END SOLUTION'''),
    ("pos_embed_similarity", '''def pos_embed_similarity(pos_embed, grid_size):
    ### BEGIN SOLUTION
    gh, gw = grid_size
    if pos_embed.shape[0] == gh * gw + 1:
        pos_embed = pos_embed[1:]
    elif pos_embed.shape[0] != gh * gw:
        raise ValueError(f"pos_embed has {pos_embed.shape[0]} rows for a {gh}x{gw} grid")
    unit = pos_embed / pos_embed.norm(dim=-1, keepdim=True)
    return (unit @ unit.T).reshape(gh, gw, gh, gw)
    ### END SOLUTION'''),
    ("resize_pos_embed", '''def resize_pos_embed(pos_embed, new_grid, old_grid):
    ### BEGIN SOLUTION
    (h, w), (H, W) = old_grid, new_grid
    image = pos_embed[:, 1:].reshape(1, h, w, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=(H, W), mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([pos_embed[:, :1], image.permute(0, 2, 3, 1).reshape(1, H * W, -1)], dim=1)
    ### END SOLUTION'''),
    ("bottleneck", '''from vit_edu.hybrid import StdConv2dSame


class Bottleneck(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        ### BEGIN SOLUTION
        mid = out_channels // 4
        self.conv1, self.norm1 = StdConv2dSame(in_channels, mid, 1), nn.GroupNorm(32, mid, eps=1e-5)
        self.conv2, self.norm2 = StdConv2dSame(mid, mid, 3, stride=stride), nn.GroupNorm(32, mid, eps=1e-5)
        self.conv3, self.norm3 = StdConv2dSame(mid, out_channels, 1), nn.GroupNorm(32, out_channels, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.ModuleDict({"conv": StdConv2dSame(in_channels, out_channels, 1, stride=stride),
                                             "norm": nn.GroupNorm(32, out_channels, eps=1e-5)})
        ### END SOLUTION

    def forward(self, x):
        ### BEGIN SOLUTION
        shortcut = x if self.downsample is None else self.downsample["norm"](self.downsample["conv"](x))
        h = F.relu(self.norm1(self.conv1(x)))
        h = F.relu(self.norm2(self.conv2(h)))
        return F.relu(self.norm3(self.conv3(h)) + shortcut)
        ### END SOLUTION'''),
]
