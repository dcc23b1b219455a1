"""ListInitializers: every initializer of the Initializer oneof, described from the engine's registry."""

from __future__ import annotations

from weightgen.server import engine as eng
from weightgen.v1 import weightgen_pb2 as pb
from weightgen.v1 import wire


def list_initializers() -> pb.ListInitializersResponse:
    kinds = pb.Initializer.DESCRIPTOR.oneofs_by_name["kind"].fields
    inexact = [v for v, (name, _) in wire.DTYPES.items() if eng.dtypes.lookup(name).is_inexact]
    infos = []
    for field in kinds:
        definition = eng.REGISTRY[field.name]
        defaults = {p.name: p for p in definition.params}
        params = []
        for f in field.message_type.fields:
            p = defaults[f.name]
            if f.enum_type is not None:
                type_name = f.enum_type.name
            elif f.message_type is not None:
                type_name = f.message_type.name
            else:
                type_name = {f.TYPE_DOUBLE: "double", f.TYPE_INT32: "int32"}.get(f.type, str(f.type))
            params.append(
                pb.ParameterInfo(
                    name=f.name,
                    type=type_name,
                    default_value="" if p.default is None else str(p.default),
                    description=p.doc,
                    choices=list(p.choices),
                )
            )
        infos.append(
            pb.InitializerInfo(
                name=field.name,
                json_name=field.json_name,
                formula=definition.formula,
                parameters=params,
                random=definition.random,
                fan_based=definition.fan_based,
                value_dtypes=inexact if definition.random else list(wire.DTYPES),
            )
        )
    return pb.ListInitializersResponse(initializers=infos, dtypes=list(wire.DTYPES), generator=eng.GENERATOR)
