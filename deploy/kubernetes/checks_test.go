package manifests

import (
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
)

const driverName = "ploop.csi.dev"

func TestCSIDriverAndClasses(t *testing.T) {
	objs := render(t, ".")
	d := get[storagev1.CSIDriver](t, objs, "CSIDriver", driverName)
	if d.Spec.AttachRequired == nil || *d.Spec.AttachRequired ||
		d.Spec.PodInfoOnMount == nil || !*d.Spec.PodInfoOnMount ||
		d.Spec.StorageCapacity == nil || !*d.Spec.StorageCapacity ||
		!slices.Equal(d.Spec.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) {
		t.Errorf("CSIDriver spec %+v", d.Spec)
	}
	sc := get[storagev1.StorageClass](t, objs, "StorageClass", "ploop")
	if sc.Provisioner != driverName || sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer ||
		sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion || sc.Parameters["csi.storage.k8s.io/fstype"] != "ext4" {
		t.Errorf("StorageClass %+v", sc)
	}
	for k := range sc.Parameters { // the driver rejects unknown keys (InvalidArgument)
		if !strings.HasPrefix(k, "csi.storage.k8s.io/") && k != "clusterSize" {
			t.Errorf("StorageClass parameter %q is not one the driver accepts", k)
		}
	}
	vsc := get[snapv1.VolumeSnapshotClass](t, objs, "VolumeSnapshotClass", "ploop")
	if vsc.Driver != driverName || vsc.DeletionPolicy != snapv1.VolumeSnapshotContentDelete {
		t.Errorf("VolumeSnapshotClass %+v", vsc)
	}
}

func container(t *testing.T, ds *appsv1.DaemonSet, name string) *corev1.Container {
	t.Helper()
	for i := range ds.Spec.Template.Spec.Containers {
		if c := &ds.Spec.Template.Spec.Containers[i]; c.Name == name {
			return c
		}
	}
	t.Fatalf("DaemonSet %s has no container %s", ds.Name, name)
	return nil
}

// flags parses "--name=value" arguments.
func flags(t *testing.T, c *corev1.Container) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, a := range c.Args {
		name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || name == "" {
			t.Errorf("%s: argument %q is not --name[=value]", c.Name, a)
		}
		if _, dup := m[name]; dup {
			t.Errorf("%s: --%s given twice", c.Name, name)
		}
		m[name] = value
	}
	return m
}

// hostPathAt returns the host path mounted at mountPath in c, with the mount.
func hostPathAt(t *testing.T, ds *appsv1.DaemonSet, c *corev1.Container, mountPath string) (string, corev1.VolumeMount) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.MountPath != mountPath {
			continue
		}
		for _, v := range ds.Spec.Template.Spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil {
				return v.HostPath.Path, m
			}
		}
		t.Fatalf("%s: mount %s is not a hostPath volume", c.Name, mountPath)
	}
	t.Fatalf("%s: nothing mounted at %s", c.Name, mountPath)
	return "", corev1.VolumeMount{}
}

func envNames(c *corev1.Container) []string {
	var n []string
	for _, e := range c.Env {
		n = append(n, e.Name)
	}
	return n
}

// flagNamesIn are the flags that cmd/csi-ploop/FILE defines (fs.Xxx("name", ...),
// fs.XxxVar(&..., "name", ...)), in the bodies of funcs (func name with its
// opening parenthesis) or, without funcs, in the whole file.
func flagNamesIn(t *testing.T, file string, funcs ...string) map[string]bool {
	t.Helper()
	src, err := os.ReadFile("../../cmd/csi-ploop/" + file)
	if err != nil {
		t.Fatal(err)
	}
	bodies := []string{string(src)}
	if len(funcs) > 0 {
		bodies = nil
		for _, fn := range funcs {
			_, body, ok := strings.Cut(string(src), fn)
			if !ok {
				t.Fatalf("%s not found in cmd/csi-ploop/%s", fn, file)
			}
			body, _, _ = strings.Cut(body, "\nfunc ")
			bodies = append(bodies, body)
		}
	}
	names := map[string]bool{"v": true} // klog flags are added at run time
	re := regexp.MustCompile(`fs\.\w*\((?:[^,"]+,\s*)?"([a-z0-9-]+)"`)
	for _, body := range bodies {
		for _, m := range re.FindAllStringSubmatch(body, -1) {
			names[m[1]] = true
		}
	}
	return names
}

// driverFlagNames are the flags cmd/csi-ploop/driver.go defines.
func driverFlagNames(t *testing.T) map[string]bool {
	t.Helper()
	names := flagNamesIn(t, "driver.go")
	if !names["endpoint"] || !names["kubelet-registration-path"] {
		t.Fatalf("could not read the driver's flags from cmd/csi-ploop/driver.go: %v", names)
	}
	return names
}

func TestNodeDaemonSet(t *testing.T) {
	objs := render(t, ".")
	ds := get[appsv1.DaemonSet](t, objs, "DaemonSet", "csi-ploop-node")
	spec := ds.Spec.Template.Spec
	get[corev1.ServiceAccount](t, objs, "ServiceAccount", spec.ServiceAccountName)
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	for _, c := range spec.Containers {
		for _, m := range c.VolumeMounts {
			if _, ok := vols[m.Name]; !ok {
				t.Errorf("%s mounts undefined volume %s", c.Name, m.Name)
			}
		}
		if !strings.Contains(c.Image, ":") || strings.HasSuffix(c.Image, ":") {
			t.Errorf("%s: image %q has no tag", c.Name, c.Image)
		}
	}

	plugin := container(t, ds, "csi-ploop")
	if sc := plugin.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("csi-ploop must be privileged (loop devices, FUSE, mounts)")
	}
	known := driverFlagNames(t)
	f := flags(t, plugin)
	for name := range f {
		if !known[name] {
			t.Errorf("csi-ploop: flag --%s is not defined in cmd/csi-ploop/driver.go", name)
		}
	}
	if f["mode"] != "all" || f["node-id"] != "$(NODE_NAME)" || !slices.Contains(envNames(plugin), "NODE_NAME") {
		t.Errorf("csi-ploop: mode %q node-id %q env %v", f["mode"], f["node-id"], envNames(plugin))
	}
	if e := plugin.Env[slices.Index(envNames(plugin), "NODE_NAME")]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil ||
		e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME does not come from spec.nodeName: %+v", e)
	}

	// The CSI socket: the registration path the kubelet is told must be the host
	// side of the directory the driver listens in.
	sock := strings.TrimPrefix(f["endpoint"], "unix://")
	hostDir, _ := hostPathAt(t, ds, plugin, path.Dir(sock))
	if want := path.Join(hostDir, path.Base(sock)); f["kubelet-registration-path"] != want {
		t.Errorf("--kubelet-registration-path %q, want %q (host side of --endpoint)", f["kubelet-registration-path"], want)
	}
	if hostDir != "/var/lib/kubelet/plugins/"+driverName {
		t.Errorf("plugin dir %s", hostDir)
	}
	if reg, _ := hostPathAt(t, ds, plugin, f["plugin-registration-dir"]); reg != "/var/lib/kubelet/plugins_registry" {
		t.Errorf("--plugin-registration-dir is %s on the host", reg)
	}
	if kd, m := hostPathAt(t, ds, plugin, "/var/lib/kubelet"); kd != "/var/lib/kubelet" ||
		m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
		t.Errorf("kubelet dir %s mounted without Bidirectional propagation", kd)
	}
	for mp, host := range map[string]string{"/dev": "/dev", f["root"]: "/var/lib/csi-ploop", f["run-dir"]: "/run/csi-ploop"} {
		if got, _ := hostPathAt(t, ds, plugin, mp); got != host {
			t.Errorf("%s mounted from %s, want %s", mp, got, host)
		}
	}

	// Liveness through /healthz on --health-address.
	p := plugin.LivenessProbe
	if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
		t.Fatalf("csi-ploop liveness probe %+v", p)
	}
	host, port, _ := strings.Cut(f["health-address"], ":")
	probePort := p.HTTPGet.Port.String()
	for _, cp := range plugin.Ports {
		if cp.Name == probePort {
			probePort = strconv.Itoa(int(cp.ContainerPort)) // named port
		}
	}
	if probePort != port || (host != "" && host != "0.0.0.0" && p.HTTPGet.Host != host) {
		t.Errorf("liveness probe %s:%s does not reach --health-address %s", p.HTTPGet.Host, probePort, f["health-address"])
	}
	if host == "127.0.0.1" && !spec.HostNetwork {
		t.Error("health address on loopback needs hostNetwork (the kubelet probes from the host)")
	}

	// Sidecars talk to the same socket and run per node.
	for _, name := range []string{"csi-provisioner", "csi-snapshotter", "csi-resizer"} {
		c := container(t, ds, name)
		sf := flags(t, c)
		if sf["csi-address"] != sock {
			t.Errorf("%s: --csi-address %q, want %q", name, sf["csi-address"], sock)
		}
		if _, dir := hostPathAt(t, ds, c, path.Dir(sock)); dir.Name != "plugin-dir" {
			t.Errorf("%s: socket dir from volume %s", name, dir.Name)
		}
		if sf["leader-election"] == "true" {
			t.Errorf("%s: leader election with a per-node deployment", name)
		}
	}
	prov := flags(t, container(t, ds, "csi-provisioner"))
	for _, k := range []string{"node-deployment", "enable-capacity", "capacity-ownerref-level", "feature-gates"} {
		if _, ok := prov[k]; !ok {
			t.Errorf("csi-provisioner: --%s missing", k)
		}
	}
	for _, e := range []string{"NODE_NAME", "NAMESPACE", "POD_NAME"} {
		if !slices.Contains(envNames(container(t, ds, "csi-provisioner")), e) {
			t.Errorf("csi-provisioner: env %s missing (node deployment, capacity owner)", e)
		}
	}
	if snap := container(t, ds, "csi-snapshotter"); flags(t, snap)["node-deployment"] != "true" || !slices.Contains(envNames(snap), "NODE_NAME") {
		t.Error("csi-snapshotter: needs --node-deployment=true and NODE_NAME")
	}
}

// TestRBAC: every binding refers to a role and a service account that exist.
func TestRBAC(t *testing.T) {
	objs := render(t, ".")
	check := func(id string, subjects []rbacv1.Subject, ref rbacv1.RoleRef) {
		for _, s := range subjects {
			if s.Kind != "ServiceAccount" {
				t.Errorf("%s: subject kind %s", id, s.Kind)
				continue
			}
			sa := get[corev1.ServiceAccount](t, objs, "ServiceAccount", s.Name)
			if sa.Namespace != s.Namespace {
				t.Errorf("%s: subject %s/%s, service account in %s", id, s.Namespace, s.Name, sa.Namespace)
			}
		}
		if ref.APIGroup != rbacv1.GroupName {
			t.Errorf("%s: roleRef apiGroup %q", id, ref.APIGroup)
		}
		switch ref.Kind {
		case "ClusterRole":
			get[rbacv1.ClusterRole](t, objs, "ClusterRole", ref.Name)
		case "Role":
			get[rbacv1.Role](t, objs, "Role", ref.Name)
		default:
			t.Errorf("%s: roleRef kind %s", id, ref.Kind)
		}
	}
	n := 0
	for _, o := range objs {
		switch b := o.typed.(type) {
		case *rbacv1.ClusterRoleBinding:
			check("ClusterRoleBinding "+b.Name, b.Subjects, b.RoleRef)
			n++
		case *rbacv1.RoleBinding:
			check("RoleBinding "+b.Name, b.Subjects, b.RoleRef)
			n++
		}
	}
	for _, role := range []string{"csi-ploop-provisioner", "csi-ploop-snapshotter", "csi-ploop-resizer"} {
		get[rbacv1.ClusterRole](t, objs, "ClusterRole", role)
	}
	r := get[rbacv1.Role](t, objs, "Role", "csi-ploop-provisioner")
	if !slices.ContainsFunc(r.Rules, func(p rbacv1.PolicyRule) bool { return slices.Contains(p.Resources, "csistoragecapacities") }) {
		t.Error("provisioner Role cannot manage csistoragecapacities")
	}
	if n == 0 {
		t.Error("no bindings")
	}
}

// dataplaneRunFlags are the flags of "csi-ploop dataplane run"
// (cmd/csi-ploop/dataplane.go: dataplaneFlags and dataplaneRun).
func dataplaneRunFlags(t *testing.T) map[string]bool {
	t.Helper()
	names := flagNamesIn(t, "dataplane.go", "func dataplaneFlags(", "func dataplaneRun(")
	if !names["socket"] || !names["generation"] || !names["ready-file"] {
		t.Fatalf("could not read the data plane's flags: %v", names)
	}
	return names
}

// TestDataplaneDaemonSet: the data plane runs in its own DaemonSet that
// rolls with a surge (the new pod beside the old one takes the volumes
// over), shares with the node plugin exactly what the two talk through,
// and nothing two of its pods on one node could collide on.
func TestDataplaneDaemonSet(t *testing.T) {
	objs := render(t, ".")
	dp := get[appsv1.DaemonSet](t, objs, "DaemonSet", "csi-ploop-dataplane")
	node := get[appsv1.DaemonSet](t, objs, "DaemonSet", "csi-ploop-node")
	if u := dp.Spec.UpdateStrategy; u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil ||
		u.RollingUpdate.MaxSurge == nil || u.RollingUpdate.MaxSurge.String() != "1" ||
		u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.String() != "0" {
		t.Errorf("data plane update strategy %+v, want RollingUpdate maxSurge 1 maxUnavailable 0", u)
	}
	if node.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType {
		t.Error("the node plugin no longer needs OnDelete: its restarts do not touch the data path")
	}
	spec := dp.Spec.Template.Spec
	if spec.HostNetwork || spec.HostPID {
		t.Error("data plane pods need neither the host network nor the host PID namespace")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("data plane containers %d, want 1", len(spec.Containers))
	}
	c := &spec.Containers[0]
	plugin := container(t, node, "csi-ploop")
	if c.Image != plugin.Image {
		t.Errorf("data plane image %s, node plugin %s: one build", c.Image, plugin.Image)
	}
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("data plane must be privileged (loop devices, FUSE)")
	}
	for _, p := range c.Ports {
		if p.HostPort != 0 {
			t.Errorf("data plane host port %d: two pods on a node during a rollout would collide", p.HostPort)
		}
	}
	if c.LivenessProbe != nil {
		t.Error("a liveness probe would restart the data plane, and end every volume's serving process")
	}
	if len(c.Args) < 2 || c.Args[0] != "dataplane" || c.Args[1] != "run" {
		t.Fatalf("data plane args %v, want dataplane run ...", c.Args)
	}
	known := dataplaneRunFlags(t)
	f := flags(t, &corev1.Container{Name: c.Name, Args: c.Args[2:]})
	for name := range f {
		if !known[name] {
			t.Errorf("dataplane run: flag --%s is not defined in cmd/csi-ploop/dataplane.go", name)
		}
	}
	nf := flags(t, plugin)
	if f["socket"] != nf["dataplane-socket"] || f["socket"] == "" {
		t.Errorf("data plane --socket %q, node plugin --dataplane-socket %q", f["socket"], nf["dataplane-socket"])
	}
	if v, ok := f["init"]; !ok || v == "false" {
		t.Error("the data plane needs --init: as PID 1, a dying supervisor would take the container and every serving process with it")
	}
	if f["exit-when-retired"] != "false" {
		t.Error("a retired supervisor must wait for its pod's deletion (an exit restarts the container)")
	}
	if e := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return "$("+e.Name+")" == f["generation"] }); e < 0 ||
		c.Env[e].ValueFrom == nil || c.Env[e].ValueFrom.FieldRef == nil ||
		c.Env[e].ValueFrom.FieldRef.FieldPath != "metadata.labels['pod-template-generation']" {
		t.Errorf("--generation %q does not come from the pod-template-generation label", f["generation"])
	}
	if p := c.ReadinessProbe; p == nil || p.Exec == nil || !slices.Contains(p.Exec.Command, f["ready-file"]) {
		t.Errorf("readiness probe %+v does not look at --ready-file %s", c.ReadinessProbe, f["ready-file"])
	}
	// Shared with the node plugin, at the same paths on both sides: the
	// sockets' directory, the storage root (descriptors name absolute
	// paths), /dev.
	if f["run-dir"] != nf["run-dir"] || path.Dir(f["socket"]) != f["run-dir"] {
		t.Errorf("run dirs: data plane %s (socket %s), node plugin %s", f["run-dir"], f["socket"], nf["run-dir"])
	}
	hostRun, m := hostPathAt(t, dp, c, f["run-dir"])
	if nodeRun, _ := hostPathAt(t, node, plugin, nf["run-dir"]); hostRun != nodeRun {
		t.Errorf("run dir on the host: data plane %s, node plugin %s", hostRun, nodeRun)
	}
	if m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
		t.Error("the data plane's run dir needs Bidirectional propagation (its FUSE mounts must reach the host)")
	}
	hostRoot, _ := hostPathAt(t, dp, c, nf["root"])
	if nodeRoot, _ := hostPathAt(t, node, plugin, nf["root"]); hostRoot != nodeRoot {
		t.Errorf("storage root %s: data plane %s, node plugin %s", nf["root"], hostRoot, nodeRoot)
	}
	if dev, _ := hostPathAt(t, dp, c, "/dev"); dev != "/dev" {
		t.Errorf("/dev from %s", dev)
	}
}
