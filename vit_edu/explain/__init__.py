"""Looking inside a trained ViT: the numbers (:mod:`.analysis`) and the pictures (:mod:`.viz`).

* :mod:`vit_edu.explain.analysis`: attention rollout (and the class token's map from it), mean attention
  distance per head and layer, position-embedding similarity (and its correlation with grid distance), the
  principal components of the patch-embedding filters, and how well an attention map sits on the object.
  Only torch; every number a plot shows is computed here, so notebooks and tests can quote it.
* :mod:`vit_edu.explain.viz`: matplotlib plots of the paper's figures (Fig. 6: attention rollout maps over the
  images; Fig. 7: the patch-embedding filters, position-embedding similarity, mean attention distance per
  head and layer) and of the course's images, patch grids, per-head attention and training curves;
  :func:`vit_edu.explain.viz.save_figure` writes each picture into figures/.
* :mod:`vit_edu.explain.explorer`: :func:`explore`, an interactive attention explorer for JupyterLab (pick an
  image and a patch, a layer and a head; see the patch's attention, every head of the layer, the rollout, the
  position-embedding similarity and the attention distance), built on ipywidgets and the two modules above;
  where widgets cannot show (nbval, nbconvert, a console) it is one static figure.

    from vit_edu.explain import analysis, viz, explore
"""

from . import analysis, viz
from .explorer import explore

__all__ = ["analysis", "viz", "explore"]
