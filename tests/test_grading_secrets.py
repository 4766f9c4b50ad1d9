"""What a notebook's process holds without reading any file: the environment block and the kernel's keyrings.

A notebook's process is a fork of the sandbox server, so it holds the server's environment as the kernel wrote
it at exec (a student's code reads it off its own stack), and the session keyring the server inherited from the
teacher's login; a key in the sandbox uid's own keyrings outlives the notebook, for the next one on that uid."""

from __future__ import annotations

from vit_edu.classroom import child


def test_the_server_gets_only_what_python_and_torch_read_of_the_grader_s_environment():
    environ = {"PATH": "/usr/bin", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "2", "LD_LIBRARY_PATH": "/opt/lib",
               "CUDA_VISIBLE_DEVICES": "0", "PYTHONPATH": "/course", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
               "CANVAS_API_TOKEN": "t0k3n", "GITHUB_TOKEN": "ghp_x", "SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1"}
    assert child.server_environment(environ) == {k: environ[k] for k in
                                                 ("PATH", "LC_ALL", "OMP_NUM_THREADS", "LD_LIBRARY_PATH",
                                                  "CUDA_VISIBLE_DEVICES", "PYTHONPATH")}
