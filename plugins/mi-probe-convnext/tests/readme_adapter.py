from typing import Literal
from pydantic import BaseModel, ConfigDict
from mi_probe.plugin import SiteRef, hookimpl

class ConvNeXtAdapter:
    """timm ConvNeXt: the stem, then per block the residual branch as it is added
    (pre_add) and the block output (post_add), in forward order."""
    name = "convnext"

    def claims(self, model, arch: str) -> bool:
        return type(model).__name__ == "ConvNeXt" and all(
            type(b).__name__ == "ConvNeXtBlock" for s in model.stages for b in s.blocks)

    def site_refs(self, model) -> list[SiteRef]:
        refs = [SiteRef("stem", "stem", "stem")]
        for i, stage in enumerate(model.stages):
            for j in range(len(stage.blocks)):
                path = f"stages.{i}.blocks.{j}"
                # block: x = drop_path(gamma * mlp(norm(conv_dw(x)))) + shortcut(x); gamma is a
                # Parameter, drop_path a module (nn.Identity at rate 0) fed exactly the branch
                refs.append(SiteRef(f"{path}.pre_add", f"{path}.drop_path", "pre_add"))
                refs.append(SiteRef(f"{path}.post_add", path, "post_add"))
        return refs

class ConvNeXtParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["convnext"] = "convnext"

@hookimpl
def mi_probe_register_adapters(register):   # lets a spec force `sites: {adapter: convnext}`
    register("convnext", lambda _params: ConvNeXtAdapter(), ConvNeXtParams)

@hookimpl
def mi_probe_resolve_adapter(model, arch):  # automatic choice; the generic adapter is trylast
    adapter = ConvNeXtAdapter()
    return adapter if adapter.claims(model, arch) else None
