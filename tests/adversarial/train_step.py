"""Adversarial set for check_train_step (notebook 06): other correct styles and usual mistakes."""

import torch
import torch.nn.functional as F
from torch import nn

CHECK = "train_step"


# ------------------------------------------------------------------------------------------------- correct
def correct_module_loss(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad(set_to_none=False)
    loss = nn.CrossEntropyLoss()(model(images), labels)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def correct_nll_of_log_softmax(model, images, labels, optimizer):
    model.train(True)
    for p in model.parameters():  # zeroing by hand
        p.grad = None
    log_probs = F.log_softmax(model(images), dim=-1)
    loss = F.nll_loss(log_probs, labels)
    loss.backward()
    optimizer.step()
    return loss.detach().item()


def correct_manual_gather(model, images, labels, optimizer):
    model.train()
    logits = model(images)
    picked = logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
    loss = -picked.mean()
    value = loss.item()  # reading the value before backward is fine
    model.zero_grad()
    loss.backward()
    optimizer.step()
    return value


def zero_after_step(model, images, labels, optimizer):
    # zeroing at the end instead of the start: right only for a model that arrives without gradients
    model.train()
    loss = F.cross_entropy(model(images), labels, reduction="sum") / labels.shape[0]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def correct_closure(model, images, labels, optimizer):
    model.train()

    def closure():  # the optimizer calls it once (SGD) and returns its loss
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        return loss
    return optimizer.step(closure).item()


CORRECT = [correct_module_loss, correct_nll_of_log_softmax, correct_manual_gather, correct_closure]


# ------------------------------------------------------------------------------------------------ mistakes
def no_zero_grad(model, images, labels, optimizer):
    model.train()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def no_step(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    return loss.item()


def eval_mode(model, images, labels, optimizer):
    model.eval()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def forgets_train_mode(model, images, labels, optimizer):
    optimizer.zero_grad()  # whatever mode the model came in
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def mse_on_one_hot(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    logits = model(images)
    loss = F.mse_loss(logits.softmax(-1), F.one_hot(labels, logits.shape[-1]).float())
    loss.backward()
    optimizer.step()
    return loss.item()


def nll_on_logits(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.nll_loss(model(images), labels)  # no log_softmax
    loss.backward()
    optimizer.step()
    return loss.item()


def sum_reduction(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels, reduction="sum")
    loss.backward()
    optimizer.step()
    return loss.item()


def label_smoothing(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
    loss.backward()
    optimizer.step()
    return loss.item()


def detached_logits(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    logits = model(images).detach().requires_grad_()  # the graph to the weights is cut
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def forward_under_no_grad(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    with torch.no_grad():
        logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()  # RuntimeError: element 0 of tensors does not require grad
    optimizer.step()
    return loss.item()


def item_before_backward(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels).item()
    loss.backward()  # AttributeError: 'float' object has no attribute 'backward'
    optimizer.step()
    return loss


def returns_tensor(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss


def loss_after_step(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
    return F.cross_entropy(model(images), labels).item()


def step_before_backward(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    optimizer.step()
    loss.backward()
    return loss.item()


def clips_gradients(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    optimizer.step()
    return loss.item()


def returns_nothing(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()


def forgets_backward(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    optimizer.step()
    return loss.item()


def zero_grad_between_backward_and_step(model, images, labels, optimizer):
    model.train()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
    return loss.item()


def returns_numpy(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.detach().numpy()  # a 0-d array, not a Python float


def own_optimizer(model, images, labels, optimizer):
    opt = torch.optim.SGD(model.parameters(), lr=optimizer.param_groups[0]["lr"])  # no momentum, no weight decay
    model.train()
    opt.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()
    return loss.item()


def eval_after_the_step(model, images, labels, optimizer):
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    model.eval()  # fit expects the model still training
    return loss.item()


MISTAKES = [
    (own_optimizer, "the optimizer the one passed in"),
    (eval_after_the_step, "training mode"),
    (returns_numpy, "Python float"),
    (forgets_backward, "backward() is missing"),
    (zero_grad_between_backward_and_step, "between loss.backward() and optimizer.step()"),
    (no_zero_grad, "zero_grad"),
    (no_step, "optimizer.step"),
    (eval_mode, "train"),
    (forgets_train_mode, "train"),
    (mse_on_one_hot, "cross-entropy"),
    (nll_on_logits, "log_softmax"),
    (sum_reduction, "mean"),
    (label_smoothing, "smoothing"),
    (detached_logits, "detach"),
    (forward_under_no_grad, "no_grad"),
    (item_before_backward, "item"),
    (returns_tensor, "float"),
    (loss_after_step, "before"),
    (step_before_backward, "before"),
    (clips_gradients, "clip"),
    (returns_nothing, "return"),
]


def correct_model_zero_grad_summed_loss(model, images, labels, optimizer):
    # model.zero_grad() clears the same gradients; the summed loss over the batch size is the mean
    model.train()
    model.zero_grad(set_to_none=False)
    loss = F.cross_entropy(model(images), labels, reduction="sum") / labels.numel()
    loss.backward()
    optimizer.step()
    return loss.item()


CORRECT.append(correct_model_zero_grad_summed_loss)


def correct_accuracy_from_a_second_pass(model, images, labels, optimizer):
    # an accuracy from another forward pass in training mode, before the loss's: its dropout masks come first
    model.train()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    assert 0 <= accuracy <= 1
    return loss.item()


def loss_from_a_second_pass_without_graph(model, images, labels, optimizer):
    # backward through one pass, the returned loss from another (other dropout masks)
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    with torch.no_grad():
        shown = F.cross_entropy(model(images), labels)
    optimizer.step()
    return shown.item()


CORRECT.append(correct_accuracy_from_a_second_pass)
MISTAKES += [(zero_after_step, "after the step"), (loss_from_a_second_pass_without_graph, "2 times")]


# ---------------------------------------------------------------- other right orders and ways to get the gradient
def correct_zero_grad_after_forward(model, images, labels, optimizer):  # cleared before backward: still this batch only
    model.train()
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def correct_autograd_grad(model, images, labels, optimizer):  # the gradients written into .grad by hand
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(images), labels)
    for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
        p.grad = None if g is None else g.detach()
    optimizer.step()
    return float(loss)


CORRECT += [correct_zero_grad_after_forward, correct_autograd_grad]
